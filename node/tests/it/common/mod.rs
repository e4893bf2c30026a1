//! An in-process cluster harness: N nodes on free loopback ports with temporary data folders,
//! stopped and restarted at will. Tests wait on observed state, never on sleeps.

#![allow(dead_code)]

pub mod agent;
pub mod dev;
pub mod procs;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_node::config::{Config, Lifecycle, LogFormat, SecurityConfig};
use baton_node::raft::RaftTiming;
use baton_node::server::Server;
use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub fn init_logs() {
    // The first call installs the logger; its writer thread lives as long as the test binary.
    if let Some(guard) = baton_node::init_tracing(LogFormat::Text) {
        std::mem::forget(guard);
    }
}

/// Timing for tests: elections fast enough to keep tests short, slow enough not to flap on a
/// loaded two-core machine.
pub fn test_timing() -> RaftTiming {
    RaftTiming {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..RaftTiming::default()
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: BTreeMap<u64, Config>,
    pub servers: BTreeMap<u64, Server>,
}

impl TestCluster {
    pub async fn start(n: u64, timing: RaftTiming) -> Self {
        Self::start_with(n, timing, |_| SecurityConfig::Insecure).await
    }

    /// Like [`TestCluster::start`], each node with the security `security(id)` gives it.
    pub async fn start_with(
        n: u64,
        timing: RaftTiming,
        security: impl Fn(u64) -> SecurityConfig,
    ) -> Self {
        Self::start_customized(n, timing, |id, config| config.security = security(id)).await
    }

    /// Like [`TestCluster::start`], each node's configuration changed by `customize(id, config)`
    /// first.
    pub async fn start_customized(
        n: u64,
        timing: RaftTiming,
        customize: impl Fn(u64, &mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listeners.insert(id, listener);
        }
        let initial_cluster: BTreeMap<u64, String> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
            .collect();
        let mut cluster = Self {
            configs: BTreeMap::new(),
            servers: BTreeMap::new(),
            dir,
        };
        for (id, listener) in listeners {
            let mut config = Config {
                node_id: id,
                listen: listener.local_addr().unwrap(),
                data_dir: cluster.dir.path().join(format!("node{id}")),
                initial_cluster: initial_cluster.clone(),
                metrics_listen: None,
                health_listen: None,
                http_listen: None,
                log_format: LogFormat::Text,
                timing: timing.clone(),
                peer_dial: BTreeMap::new(),
                max_connection_age: baton_node::limits::CONNECTION_AGE_DEFAULT,
                // In-process tests must not depend on the free space of the machine running
                // them; t58_full_disk tests the reserve with real processes.
                disk_reserve_bytes: 0,
                lifecycle: default_lifecycle(),
                security: SecurityConfig::Insecure,
            };
            customize(id, &mut config);
            let server = Server::start(&config, Some(listener))
                .await
                .expect("node starts");
            cluster.configs.insert(id, config);
            cluster.servers.insert(id, server);
        }
        cluster
    }

    /// Starts a node that is not in the initial membership (to be added with AddMember).
    pub async fn start_joiner(&mut self, id: u64, timing: RaftTiming) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let config = Config {
            node_id: id,
            listen: listener.local_addr().unwrap(),
            data_dir: self.dir.path().join(format!("node{id}")),
            initial_cluster: BTreeMap::new(),
            metrics_listen: None,
            health_listen: None,
            http_listen: None,
            log_format: LogFormat::Text,
            timing,
            peer_dial: BTreeMap::new(),
            max_connection_age: baton_node::limits::CONNECTION_AGE_DEFAULT,
            // In-process tests must not depend on the free space of the machine running
            // them; t58_full_disk tests the reserve with real processes.
            disk_reserve_bytes: 0,
            lifecycle: default_lifecycle(),
            security: SecurityConfig::Insecure,
        };
        let server = Server::start(&config, Some(listener))
            .await
            .expect("joiner starts");
        let addr = server.addr;
        self.configs.insert(id, config);
        self.servers.insert(id, server);
        addr
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.configs[&id].listen
    }

    pub fn running(&self) -> Vec<u64> {
        self.servers.keys().copied().collect()
    }

    /// The lowest-id running node other than `leader`.
    pub fn follower(&self, leader: u64) -> u64 {
        self.running()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a running node besides the leader")
    }

    /// Waits until every running node agrees on one leader, and returns it.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        wait_for(timeout, "a leader all running nodes agree on", || async {
            let mut leaders = self.servers.values().map(|s| s.node.status().leader);
            let first = leaders.next().flatten()?;
            let agreed = leaders.all(|l| l == Some(first)) && self.servers.contains_key(&first);
            agreed.then_some(first)
        })
        .await
    }

    /// Stops a node (its data stays).
    pub async fn stop(&mut self, id: u64) {
        let server = self.servers.remove(&id).expect("node is running");
        server.shutdown().await;
    }

    /// Restarts a stopped node on its old address and data.
    pub async fn restart(&mut self, id: u64) {
        let config = self.configs[&id].clone();
        let listener = wait_for(
            Duration::from_secs(10),
            "the old port to be free",
            || async { TcpListener::bind(config.listen).await.ok() },
        )
        .await;
        let server = Server::start(&config, Some(listener))
            .await
            .expect("node restarts");
        self.servers.insert(id, server);
    }

    pub async fn workflows(&self, id: u64) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::new(channel(self.addr(id)))
    }

    pub async fn admin(&self, id: u64) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(channel(self.addr(id)))
    }

    /// Waits until every running node has applied the same index, then returns each node's
    /// status (applied index and state hash).
    pub async fn converged(&self, timeout: Duration) -> Vec<pb::ClusterStatusResponse> {
        wait_for(timeout, "all nodes to apply the same index", || async {
            let mut statuses = Vec::new();
            for &id in self.servers.keys() {
                let status = self
                    .admin(id)
                    .await
                    .cluster_status(pb::ClusterStatusRequest {})
                    .await
                    .ok()?;
                statuses.push(status.into_inner());
            }
            let first = statuses.first()?.applied_index;
            statuses
                .iter()
                .all(|s| s.applied_index == first && first > 0)
                .then_some(statuses)
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for (_, server) in std::mem::take(&mut self.servers) {
            server.shutdown().await;
        }
    }
}

/// The lifecycle settings `batond` takes by default: a week's retention, no archive.
pub fn default_lifecycle() -> Lifecycle {
    Lifecycle {
        default_retention_ms: baton_node::config::RETENTION_DEFAULT_MS,
        idempotency_window_ms: baton_node::config::IDEMPOTENCY_WINDOW_DEFAULT_MS,
        archive_dir: None,
    }
}

pub fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(15))
        .connect_lazy()
}

/// The cluster status the node at `addr` answers, if it answers.
pub async fn status(addr: SocketAddr) -> Option<pb::ClusterStatusResponse> {
    Some(
        AdminServiceClient::new(channel(addr))
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

/// Waits until every node in `addrs` knows the same leader and has applied the same index with
/// the same state hash, and returns their statuses.
pub async fn converged_at(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Vec<pb::ClusterStatusResponse> {
    wait_for(timeout, "the nodes to converge", || async {
        let mut statuses = Vec::new();
        for addr in addrs {
            statuses.push(status(*addr).await?);
        }
        let first = &statuses[0];
        let agreed = first.leader_id != 0
            && statuses.iter().all(|s| {
                s.leader_id == first.leader_id
                    && s.applied_index == first.applied_index
                    && s.state_hash == first.state_hash
            });
        agreed.then_some(statuses)
    })
    .await
}

/// Waits until the leader has bound the data folder of every member (`Member.data_folder`):
/// the bindings are log entries the leader writes on its own, once it has heard from every
/// member, so a test that compares states across a stop (a hash, a backup) waits for them first.
pub async fn folders_bound(addrs: &[SocketAddr], timeout: Duration) {
    wait_for(timeout, "every member's data folder bound", || async {
        for addr in addrs {
            let Some(s) = status(*addr).await else {
                continue;
            };
            if s.leader_id == s.node_id {
                return (!s.members.is_empty()
                    && s.members.iter().all(|m| !m.data_folder.is_empty()))
                .then_some(());
            }
        }
        None
    })
    .await
}

/// Polls `probe` until it returns Some, or panics naming what never happened.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `client` until workflow `id` has succeeded, and returns it.
pub async fn wait_for_success(
    client: &WorkflowServiceClient<Channel>,
    id: u64,
    timeout: Duration,
) -> pb::Workflow {
    wait_for(timeout, "the workflow to succeed", || {
        let mut client = client.clone();
        async move {
            let workflow = client
                .get(pb::GetRequest {
                    workflow_id: id,
                    consistency: 0,
                    attempts_of_step: String::new(),
                })
                .await
                .ok()?
                .into_inner()
                .workflow?;
            (workflow.state == pb::WorkflowState::Succeeded as i32).then_some(workflow)
        }
    })
    .await
}

pub fn noop_spec(name: &str, steps: usize) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: name.into(),
        steps: (0..steps)
            .map(|i| pb::StepSpec {
                name: format!("s{i}"),
                depends_on: if i == 0 {
                    vec![]
                } else {
                    vec![format!("s{}", i - 1)]
                },
                task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
