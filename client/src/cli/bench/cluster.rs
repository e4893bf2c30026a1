//! A throwaway cluster for `baton bench --start-cluster`: three `batond` processes (the binary
//! beside this `baton`) started through `baton-launch` on loopback ports reserved for the
//! cluster (started again on new ones if a node finds its port taken), with data in a temporary
//! folder, and agents running this same `baton` binary (whose executor runs noop steps). Every
//! child dies with the bench: stopped by [`LocalCluster::stop`], SIGKILLed (its whole process
//! group) when dropped on an error path, and sent SIGTERM by the kernel if the bench itself is
//! killed. The `/proc` samples `resources.rs` and `etcd.rs` take are `baton_launch::sample`'s.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_client::{Client, ClientConfig, CredentialSources, Credentials, Endpoints};
use baton_launch::{ATTEMPTS, NodeSpec, PortPicker, Ports, Security, SpawnOptions, Supervised};

pub use baton_launch::sample::{ProcSample, clock_ticks_per_second, sample};

use super::usage::NodeUsage;

const NODES: u64 = 3;
/// How long the cluster may take to elect a leader and see every agent.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the bench's children are started: SIGTERM from the kernel if the bench dies (a node
/// stops as it would for a supervisor), logs appended (a restarted node keeps its earlier log).
pub(super) fn spawn_options() -> SpawnOptions {
    SpawnOptions::default()
        .terminated_with_launcher()
        .appending()
}

pub struct LocalCluster {
    nodes: Vec<(u64, Supervised)>,
    /// How each node is started (same order as `nodes`), to restart one.
    node_specs: Vec<NodeSpec>,
    batond: PathBuf,
    agents: Vec<Supervised>,
    pub endpoints: Endpoints,
    /// What clients of this cluster present: nothing (plaintext), or with `tls` the `bench`
    /// client certificate and the bootstrap admin token.
    pub credentials: Credentials,
    /// The nodes' ports, reserved for as long as the cluster lives (restarts included).
    _ports: Ports,
    /// Kept until the end: dropping it removes the nodes' data and logs.
    data: tempfile::TempDir,
}

impl LocalCluster {
    /// With `tls`, the cluster is secured as in production (`batond certs` into the data
    /// folder, mutual TLS, the bootstrap admin token, agents with an agent token), so a run
    /// measures what TLS and token checks cost; otherwise plaintext (`--insecure`).
    pub async fn start(agents: u32, agent_slots: u32, tls: bool) -> anyhow::Result<LocalCluster> {
        let baton = std::env::current_exe().context("finding the baton binary")?;
        let batond = baton.with_file_name("batond");
        if !batond.is_file() {
            bail!(
                "--start-cluster needs batond beside baton, and {} is not there",
                batond.display()
            );
        }
        let data = tempfile::Builder::new()
            .prefix("baton-bench-")
            .tempdir()
            .context("creating a temporary data folder")?;
        let pki = data.path().join("pki");
        let security = if tls {
            let mut certs = Command::new(&batond);
            certs.arg("certs").arg("--out").arg(&pki);
            for id in 1..=NODES {
                certs.args(["--node", &format!("{id}=127.0.0.1")]);
            }
            let out = certs
                .args(["--agent", "bench", "--client", "bench"])
                .output()
                .context("running batond certs")?;
            if !out.status.success() {
                bail!("batond certs: {}", String::from_utf8_lossy(&out.stderr));
            }
            // `batond certs` writes the layout `Security::Tls` reads.
            Security::Tls {
                pki: pki.clone(),
                bootstrap_token: Some(pki.join("bootstrap-token")),
            }
        } else {
            Security::Insecure
        };
        let credentials = if tls {
            CredentialSources {
                dir: Some(pki.join("client-bench")),
                token_file: Some(pki.join("bootstrap-token")),
                ..CredentialSources::default()
            }
            .load()?
        } else {
            Credentials::default()
        };
        // Free ports that no other launcher or kernel choice can take; a node that still finds
        // its port taken makes the three start again on new ones (baton-launch).
        let dir = data.path().to_path_buf();
        let ((nodes, node_specs), ports) = baton_launch::launch(
            &mut PortPicker::new(),
            NODES as usize,
            ATTEMPTS,
            async |attempt, ports: &Ports| {
                let specs: Vec<NodeSpec> = (1..=NODES)
                    .map(|id| {
                        NodeSpec::new(id, ports.addr(id as usize - 1), &dir)
                            .initial_cluster(baton_launch::initial_cluster(
                                (1..=NODES).zip(&ports.addrs()),
                            ))
                            .security(security.clone())
                    })
                    .collect();
                if attempt > 1 {
                    // The failed attempt's nodes may have formed a cluster on its ports.
                    for spec in &specs {
                        let _ = std::fs::remove_dir_all(&spec.data_dir);
                    }
                }
                let nodes = baton_launch::spawn_nodes(&batond, &specs, spawn_options()).await?;
                Ok((nodes, specs))
            },
        )
        .await?;
        let endpoints = ports
            .addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            nodes: (1..=NODES).zip(nodes).collect(),
            node_specs,
            batond,
            agents: Vec::new(),
            endpoints: Endpoints::parse(&endpoints)?,
            credentials,
            _ports: ports,
            data,
        };
        let agent_credentials = pki.join("agent-bench");
        if tls {
            // The agents' token, made with the admin token once a leader has recorded it.
            let token = cluster.create_agent_token().await?;
            std::fs::write(agent_credentials.join("token"), token)
                .context("writing the agents' token")?;
        }
        for i in 1..=agents {
            let mut command = Command::new(&baton);
            if tls {
                command.arg("--credentials").arg(&agent_credentials);
            }
            command.args([
                "--endpoints",
                &cluster.endpoints.to_string(),
                "agent",
                "--name",
                // The `bench` certificate names a pool: its agents register as bench.N.
                &format!("bench.agent-{i}"),
                "--slots",
                &agent_slots.to_string(),
            ]);
            let log = cluster.data.path().join(format!("agent{i}.log"));
            let options = spawn_options();
            let child = Supervised::spawn_with(
                command,
                &log,
                SpawnOptions {
                    append: false,
                    ..options
                },
            )
            .with_context(|| format!("starting agent {i}"))?;
            cluster.agents.push(child);
        }
        cluster.wait_ready(agents).await?;
        Ok(cluster)
    }

    fn spawn_node(&self, id: u64) -> anyhow::Result<Supervised> {
        let spec = &self.node_specs[id as usize - 1];
        Supervised::spawn_with(spec.command(&self.batond), &spec.log, spawn_options())
            .with_context(|| format!("starting node {id}"))
    }

    /// SIGKILLs node `id` and starts it again on its data (it rejoins as a follower).
    pub async fn kill_and_restart(&mut self, id: u64) -> anyhow::Result<()> {
        let index = self
            .nodes
            .iter()
            .position(|(node, _)| *node == id)
            .with_context(|| format!("no bench node {id}"))?;
        self.nodes[index].1.kill();
        self.nodes[index].1 = self.spawn_node(id)?;
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::with_config(
            self.endpoints.clone(),
            ClientConfig {
                credentials: self.credentials.clone(),
                ..ClientConfig::default()
            },
        )?)
    }

    async fn create_agent_token(&mut self) -> anyhow::Result<String> {
        let client = self.client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            match client
                .create_token("bench-agents", "agent", Default::default())
                .await
            {
                Ok(created) => return Ok(created.token),
                Err(error) if Instant::now() > deadline => {
                    bail!("creating the agents' token within {READY_TIMEOUT:?}: {error}")
                }
                // No leader yet, or the bootstrap token not recorded yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits for a leader and for every agent to be connected, and for no child to have died.
    async fn wait_ready(&mut self, agents: u32) -> anyhow::Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let status = client.cluster_status().await.ok();
            if status.is_some_and(|s| s.leader_id != 0) {
                let connected = client
                    .list_agents()
                    .await
                    .map_or(0, |list| list.agents.iter().filter(|a| a.connected).count());
                if connected >= agents as usize {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the bench cluster was not ready (a leader and {agents} agents) within {:?}",
                    READY_TIMEOUT
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error naming the first child that exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (id, child) in &mut self.nodes {
            if let Some(status) = child.try_wait()? {
                bail!("bench node {id} exited ({status})");
            }
        }
        for (i, child) in self.agents.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                bail!("bench agent {} exited ({status})", i + 1);
            }
        }
        Ok(())
    }

    /// `(node id, pid)` of each node.
    pub fn node_pids(&self) -> Vec<(u64, u32)> {
        self.nodes
            .iter()
            .map(|(id, child)| (*id, child.pid()))
            .collect()
    }

    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().map(Supervised::pid).collect()
    }

    /// SIGTERM to every child (agents first, so that they do not retry against dying nodes),
    /// then SIGKILL to any still running after 5 s.
    pub async fn stop(mut self) {
        for child in &mut self.agents {
            child.stop(STOP_GRACE).await;
        }
        for (_, child) in &mut self.nodes {
            child.stop(STOP_GRACE).await;
        }
    }
}

/// How long a child may take to stop after SIGTERM before it is killed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);

/// A process's CPU over `seconds` of wall time since `before`, and its memory now; `None` if
/// either sample is missing (the process is gone).
pub fn usage(
    node_id: u64,
    pid: u32,
    before: Option<ProcSample>,
    seconds: f64,
) -> Option<NodeUsage> {
    let (before, after) = (before?, sample(pid)?);
    let cpu_seconds =
        after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks_per_second() as f64;
    Some(NodeUsage {
        node_id,
        cpu_percent: 100.0 * cpu_seconds / seconds,
        rss_mib: after.rss_kib as f64 / 1024.0,
        rss_peak_mib: after.rss_peak_kib as f64 / 1024.0,
    })
}
