//! The supervised cluster: `batond` nodes whose every directed link (node i -> node j) runs
//! through its own proxy (`--peer-dial`), a proxy per node for the harness's client, and agents
//! that reach each node through a proxy of their own (`baton agent --dial`).
//!
//! Secured as in production unless `--insecure`: a CA of the run's own, mutual TLS on every link
//! (the proxies pass TLS through untouched), the harness's clients with an admin token recorded
//! through `--bootstrap-token-file`, and each agent with a certificate naming it and an agent
//! token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_client::{Client, ClientConfig, Credentials, Endpoint, Endpoints};
use baton_security::devcerts::{self, DevCa};
use baton_security::{PeerIdentity, PeerRole, TlsSettings};

use baton_launch::launch::LISTEN_TIMEOUT;
use baton_launch::{ATTEMPTS, NodeSpec, PortPicker, Ports, Security, SpawnOptions, Supervised};
use baton_powerloss::{CutReport, Tear};

use crate::proxy::{Mode, Proxy};

pub const SLOTS_PER_AGENT: usize = 4;

/// Node ids beyond the founding members, each with an address, certificate and proxies made at
/// the start, for nodes added during the run (membership change under load).
pub const SPARE_NODES: u64 = 4;

pub struct Cluster {
    pub dir: PathBuf,
    bin: PathBuf,
    /// The current members (founding ones, minus the removed, plus the added).
    pub node_addrs: BTreeMap<u64, SocketAddr>,
    /// Every address a node of this run may have, the spare ones included.
    all_addrs: BTreeMap<u64, SocketAddr>,
    founding: u64,
    /// The spare id [`Cluster::replace_node`] uses next.
    next_spare: u64,
    pub nodes: BTreeMap<u64, Supervised>,
    /// (from, to) -> the proxy `from` dials to reach `to` (spare nodes included).
    pub links: BTreeMap<(u64, u64), Proxy>,
    /// node -> the proxy the harness's workload client dials.
    pub client_links: BTreeMap<u64, Proxy>,
    /// (agent, node) -> the proxy that agent dials to reach that node (`baton agent --dial`
    /// maps the leader a follower names onto it too).
    pub agent_links: BTreeMap<(String, u64), Proxy>,
    pub agents: BTreeMap<String, Supervised>,
    pub journal: PathBuf,
    /// `None`: `--insecure` everywhere.
    pki: Option<Pki>,
    /// `BATON_FAULT_INJECTION` for every node: a deliberately broken build.
    broken: Option<&'static str>,
    /// The power-loss shim every node runs under (`baton-powerloss-preload`), so that any node
    /// can lose what it had not synced ([`Cluster::power_cut`]).
    preload: PathBuf,
    /// Every node's port, spares included, reserved for the whole run (baton-launch): a node
    /// killed and restarted, or a spare started late, finds its port as it was.
    _ports: Option<Ports>,
}

/// How the suite's processes are started: logs appended (a restarted process keeps its earlier
/// log), SIGKILL if the harness dies.
fn spawn_options() -> SpawnOptions {
    SpawnOptions::default().appending()
}

/// Where `batond` and `baton` are: `BATON_BIN_DIR`, else next to this binary (cargo puts every
/// workspace binary in one folder).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = baton_launch::bins::from_env_or_beside("BATON_BIN_DIR")?;
    if let Some(missing) = baton_launch::bins::missing(
        &dir,
        &[baton_launch::bins::BATOND, baton_launch::bins::BATON],
    ) {
        anyhow::bail!(
            "{} not found: build it first (cargo build --workspace --bins --examples, the test \
             build's features) or set BATON_BIN_DIR",
            missing.display()
        );
    }
    Ok(dir)
}

/// The run's credentials.
struct Pki {
    dir: PathBuf,
    ca: DevCa,
    /// What the harness's clients present: the `chaos` client certificate and the admin token.
    client: Credentials,
    /// The agents' token, created once the cluster is up ([`Cluster::prepare_agents`]).
    agent_token: Option<String>,
}

impl Pki {
    fn create(dir: &Path, nodes: u64) -> anyhow::Result<Pki> {
        let ca = DevCa::open_or_create(dir)?;
        for id in 1..=nodes {
            ca.issue(dir, &PeerIdentity::new(PeerRole::Node, id.to_string()))?;
        }
        let files = ca.issue(dir, &PeerIdentity::new(PeerRole::Client, "chaos"))?;
        let admin = baton_security::token::generate()
            .map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
        let token_file = dir.join("bootstrap-token");
        std::fs::write(&token_file, &admin.text)?;
        std::fs::set_permissions(
            &token_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca,
            client: Credentials {
                tls: Some(TlsSettings::load(files)?),
                token: Some(admin.text),
            },
            agent_token: None,
        })
    }
}

impl Cluster {
    pub async fn start(
        bin: &Path,
        dir: &Path,
        nodes: u64,
        secure: bool,
        broken: Option<&'static str>,
    ) -> anyhow::Result<Cluster> {
        let preload = baton_powerloss::find_preload(bin).map_err(|e| {
            anyhow::anyhow!("{e} (scripts/chaos builds it: cargo build -p baton-powerloss-preload)")
        })?;
        let all = nodes + SPARE_NODES;
        // Ports no other launcher or kernel choice can take; a founding node that still finds
        // its port taken makes the whole start again on new ports, proxies included.
        let (mut cluster, ports) = baton_launch::launch(
            &mut PortPicker::new(),
            all as usize,
            ATTEMPTS,
            async |attempt, ports: &Ports| {
                if attempt > 1 {
                    // The failed attempt's nodes may have formed a cluster on its ports.
                    for id in 1..=all {
                        let _ = std::fs::remove_dir_all(dir.join(format!("node{id}")));
                        let _ = std::fs::remove_file(dir.join(format!("node{id}.powerloss")));
                    }
                }
                let pki = secure
                    .then(|| Pki::create(&dir.join("pki"), all))
                    .transpose()?;
                let all_addrs: BTreeMap<u64, SocketAddr> = (1..=all)
                    .map(|id| (id, ports.addr(id as usize - 1)))
                    .collect();
                let mut links = BTreeMap::new();
                let mut client_links = BTreeMap::new();
                for (&to, &addr) in &all_addrs {
                    for from in 1..=all {
                        if from != to {
                            links.insert((from, to), Proxy::start(addr).await?);
                        }
                    }
                    client_links.insert(to, Proxy::start(addr).await?);
                }
                let node_addrs = all_addrs.range(1..=nodes).map(|(i, a)| (*i, *a)).collect();
                let mut cluster = Cluster {
                    dir: dir.to_path_buf(),
                    bin: bin.to_path_buf(),
                    node_addrs,
                    all_addrs,
                    founding: nodes,
                    next_spare: nodes + 1,
                    nodes: BTreeMap::new(),
                    links,
                    client_links,
                    agent_links: BTreeMap::new(),
                    agents: BTreeMap::new(),
                    journal: dir.join("journal"),
                    pki,
                    broken,
                    preload: preload.clone(),
                    _ports: None,
                };
                for id in 1..=nodes {
                    cluster.start_node(id)?;
                }
                for id in 1..=nodes {
                    let port = cluster.all_addrs[&id].port();
                    let node = cluster.nodes.get_mut(&id).expect("just started");
                    baton_launch::wait_listening(
                        node,
                        &format!("node {id}"),
                        &[port],
                        LISTEN_TIMEOUT,
                    )
                    .await?;
                }
                Ok(cluster)
            },
        )
        .await?;
        cluster._ports = Some(ports);
        Ok(cluster)
    }

    /// Starts (or restarts, on the same data) node `id`. A founding member gets
    /// `--initial-cluster`; a spare starts empty, to be added by [`Cluster::replace_node`].
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let dial: Vec<String> = self
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .map(|((_, to), proxy)| format!("{}={}", self.all_addrs[to], proxy.addr))
            .collect();
        let mut spec = NodeSpec::new(id, self.all_addrs[&id], &self.dir);
        if id <= self.founding {
            spec = spec.initial_cluster(baton_launch::initial_cluster(
                self.all_addrs
                    .range(1..=self.founding)
                    .map(|(i, a)| (*i, a)),
            ));
        }
        if let Some(pki) = &self.pki {
            spec = spec.security(Security::Tls {
                pki: pki.dir.clone(),
                bootstrap_token: Some(pki.dir.join("bootstrap-token")),
            });
        }
        // The shim refuses a change to its root's own entry: the folder exists before the node.
        std::fs::create_dir_all(&spec.data_dir)?;
        for (key, value) in
            baton_powerloss::child_env(&self.preload, &spec.data_dir, &self.power_journal(id))?
        {
            spec = spec.env(key, value);
        }
        spec = spec
            .args(["--peer-dial", &dial.join(",")])
            .args(["--heartbeat-ms", "50"])
            .args(["--election-timeout-min-ms", "300"])
            .args(["--election-timeout-max-ms", "600"])
            // Small, so that a short run takes several snapshots: a snapshot catch-up happens,
            // and a restarted node loads a recent one.
            .args(["--snapshot-every-entries", "200"])
            .args(["--log-kept-behind-snapshot", "20"])
            .env("RUST_LOG", "info");
        if let Some(broken) = self.broken {
            spec = spec.env("BATON_FAULT_INJECTION", broken);
        }
        let command = spec.command(&self.bin.join(baton_launch::bins::BATOND));
        let proc = Supervised::spawn_with(command, &spec.log, spawn_options())?;
        self.nodes.insert(id, proc);
        Ok(())
    }

    /// Node `id`'s data folder (as [`NodeSpec::new`] places it).
    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// Where the shim journals what node `id` did to its data folder since its last cut.
    fn power_journal(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.powerloss"))
    }

    /// A power cut of node `id`: SIGKILL, then its data folder rewound to what a power cut could
    /// have left: every write it had not synced gone, every folder change whose folder was not
    /// synced undone, and with `Tear::Seeded` a seeded part of the first lost write kept (a torn
    /// write). Start it again with [`Cluster::start_node`].
    pub fn power_cut(&mut self, id: u64, tear: Tear) -> anyhow::Result<CutReport> {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.kill();
        }
        Ok(baton_powerloss::cut(
            &self.data_dir(id),
            &self.power_journal(id),
            tear,
        )?)
    }

    /// With security on, creates the agents' token (with the admin token, which the first
    /// leader records): call once a leader is there, before the first [`Cluster::start_agent`].
    pub async fn prepare_agents(&mut self, patience: Duration) -> anyhow::Result<()> {
        let Some(client) = self
            .pki
            .is_some()
            .then(|| self.direct_client(None))
            .transpose()?
        else {
            return Ok(());
        };
        let deadline = Instant::now() + patience;
        let token = loop {
            match client
                .create_token("chaos-agents", "agent", Default::default())
                .await
            {
                Ok(created) => break created.token,
                // Until the first leader has recorded the bootstrap admin token.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => anyhow::bail!("creating the agents' token: {error}"),
            }
        };
        if let Some(pki) = &mut self.pki {
            pki.agent_token = Some(token);
        }
        Ok(())
    }

    /// Starts (or restarts) agent `name`, which reaches every node through a proxy of its own.
    pub async fn start_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let mut endpoints = Vec::new();
        let mut dial = Vec::new();
        for (&id, &addr) in &self.all_addrs {
            let key = (name.to_owned(), id);
            if !self.agent_links.contains_key(&key) {
                self.agent_links
                    .insert(key.clone(), Proxy::start(addr).await?);
            }
            // Spares too: an agent that outlives a membership change still finds the members.
            let proxy = self.agent_links[&key].addr;
            endpoints.push(proxy.to_string());
            dial.push(format!("{addr}={proxy}"));
        }
        let mut command = Command::new(self.bin.join("baton"));
        if let Some(pki) = &self.pki {
            // A certificate naming this agent (it may register under no other name), and the
            // agents' token, in a credentials folder of its own.
            let identity = PeerIdentity::new(PeerRole::Agent, name);
            let creds = self.dir.join(format!("credentials-{name}"));
            if !creds.join("token").exists() {
                let token = pki
                    .agent_token
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("start_agent before prepare_agents"))?;
                pki.ca.issue(&pki.dir, &identity)?;
                devcerts::credentials_folder(&pki.dir, &identity, &creds)?;
                std::fs::write(creds.join("token"), token)?;
            }
            command.arg("--credentials").arg(&creds);
        }
        command
            .args(["agent", "--name", name])
            .args(["--slots", &SLOTS_PER_AGENT.to_string()])
            .args(["--dial", &dial.join(",")])
            .env("BATON_ENDPOINTS", endpoints.join(","))
            .env("CHAOS_AGENT", name)
            .env("CHAOS_JOURNAL", &self.journal)
            .env("RUST_LOG", "info");
        let log = self.dir.join(format!("{name}.log"));
        let proc = Supervised::spawn_with(command, &log, spawn_options())?;
        self.agents.insert(name.to_owned(), proc);
        Ok(())
    }

    /// A client to the current members through the client proxies (so partitions reach it
    /// too), with short deadlines so that faults produce unknown outcomes rather than long waits.
    /// Made again after a membership change.
    pub fn workload_client(&self) -> anyhow::Result<Client> {
        let endpoints = self
            .client_links
            .iter()
            .filter(|(id, _)| self.node_addrs.contains_key(id))
            .map(|(_, p)| Endpoint::parse(&p.addr.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client::with_config(
            Endpoints::new(endpoints)?,
            ClientConfig {
                call_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_millis(500),
                attempts_max: 4,
                retry_budget: Duration::from_secs(5),
                credentials: self.credentials(),
                ..ClientConfig::default()
            },
        )?)
    }

    /// A client of node `id` alone, through its client proxy (so the faults reach it): a
    /// watcher that stays with one node across its restarts.
    pub fn proxied_client(&self, id: u64) -> anyhow::Result<Client> {
        let endpoint = Endpoint::parse(&self.client_links[&id].addr.to_string())?;
        Ok(Client::with_config(
            Endpoints::new(vec![endpoint])?,
            ClientConfig {
                call_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_millis(500),
                attempts_max: 2,
                retry_budget: Duration::from_secs(2),
                credentials: self.credentials(),
                ..ClientConfig::default()
            },
        )?)
    }

    /// A client straight to the nodes (no proxy): the harness's own view, e.g. who leads.
    pub fn direct_client(&self, only: Option<u64>) -> anyhow::Result<Client> {
        let endpoints = self
            .node_addrs
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == **id))
            .map(|(_, a)| Endpoint::parse(&a.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client::with_config(
            Endpoints::new(endpoints)?,
            ClientConfig {
                call_timeout: Duration::from_millis(500),
                connect_timeout: Duration::from_millis(300),
                attempts_max: 1,
                credentials: self.credentials(),
                ..ClientConfig::default()
            },
        )?)
    }

    /// A client for each address a node of this run may have (spares included), straight to
    /// it and to it only: the readers' view of each replica.
    pub fn pinned_clients(&self) -> anyhow::Result<Vec<(u64, Client)>> {
        self.all_addrs
            .iter()
            .map(|(id, addr)| {
                let endpoint = Endpoint::parse(&addr.to_string())?;
                let client = Client::with_config(
                    Endpoints::new(vec![endpoint])?,
                    ClientConfig {
                        call_timeout: Duration::from_millis(1_000),
                        connect_timeout: Duration::from_millis(300),
                        attempts_max: 1,
                        credentials: self.credentials(),
                        ..ClientConfig::default()
                    },
                )?;
                Ok((*id, client))
            })
            .collect()
    }

    /// What the harness's own clients present (nothing with `--insecure`).
    fn credentials(&self) -> Credentials {
        self.pki
            .as_ref()
            .map_or_else(Credentials::default, |pki| pki.client.clone())
    }

    /// Membership change under load: starts the next spare node, adds it (learner, caught up,
    /// then voter), removes `victim` and stops it for good. Returns the new node's id, or `None`
    /// when the spares are used up. Whatever happens, the members are then taken from the
    /// cluster itself, and a process that is not one is stopped.
    pub async fn replace_node(&mut self, victim: u64) -> anyhow::Result<Option<u64>> {
        let new = self.next_spare;
        let Some(&addr) = self.all_addrs.get(&new) else {
            return Ok(None);
        };
        // Offered once, whatever happens next: an id is never reused for an empty disk.
        self.next_spare += 1;
        let admin = self.admin_client()?;
        self.start_node(new)?;
        let changed = async {
            admin
                .add_member(new, addr.to_string())
                .await
                .map_err(|e| anyhow::anyhow!("adding node {new}: {e}"))?;
            match admin.remove_member(victim).await {
                Ok(_) => Ok(()),
                // A leader removing itself steps down once the change commits, and its answer
                // may be lost: the call repeated then finds the node already gone.
                Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(()),
                Err(e) => Err(anyhow::anyhow!("removing node {victim}: {e}")),
            }
        }
        .await;
        let synced = self.sync_members(Duration::from_secs(15)).await;
        changed?;
        synced?;
        Ok(Some(new))
    }

    /// Takes the membership from the leader (with `patience`): `node_addrs` becomes it, and a
    /// running process outside it is stopped for good.
    async fn sync_members(&mut self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let members: Vec<u64> = loop {
            if let Some(leader) = self.leader().await
                && let Ok(client) = self.direct_client(Some(leader))
                && let Ok(status) = client.cluster_status().await
                && status.leader_id == leader
            {
                break status.members.iter().map(|m| m.node_id).collect();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no leader to ask for the membership within {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let outside: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !members.contains(id))
            .collect();
        for id in outside {
            if let Some(mut proc) = self.nodes.remove(&id) {
                proc.kill();
            }
        }
        self.node_addrs = members
            .iter()
            .filter_map(|id| self.all_addrs.get(id).map(|a| (*id, *a)))
            .collect();
        Ok(())
    }

    /// A client straight to the current members, patient enough for a membership change (a
    /// learner catching up before it is promoted).
    fn admin_client(&self) -> anyhow::Result<Client> {
        let endpoints = self
            .node_addrs
            .values()
            .map(|a| Endpoint::parse(&a.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client::with_config(
            Endpoints::new(endpoints)?,
            ClientConfig {
                call_timeout: Duration::from_secs(20),
                connect_timeout: Duration::from_millis(500),
                attempts_max: 6,
                retry_budget: Duration::from_secs(30),
                credentials: self.credentials(),
                ..ClientConfig::default()
            },
        )?)
    }

    /// The links between current members (what a link fault may pick).
    pub fn member_links(&self) -> Vec<(u64, u64)> {
        self.links
            .keys()
            .copied()
            .filter(|(from, to)| self.nodes.contains_key(from) && self.nodes.contains_key(to))
            .collect()
    }

    /// A live node that says it leads, if any (asked directly).
    pub async fn leader(&self) -> Option<u64> {
        self.leader_other_than(None).await
    }

    /// As `leader`, ignoring node `old`: a deposed or isolated leader may still believe it leads.
    pub async fn leader_other_than(&self, old: Option<u64>) -> Option<u64> {
        for (&id, proc) in &self.nodes {
            if !proc.alive() || proc.is_paused() || Some(id) == old {
                continue;
            }
            let Ok(client) = self.direct_client(Some(id)) else {
                continue;
            };
            if let Ok(status) = client.cluster_status().await
                && status.leader_id != 0
                && status.leader_id == status.node_id
            {
                return Some(id);
            }
        }
        None
    }

    /// A direct client for each running node but `except`, by id: what a failover measurement
    /// asks while other faults go on.
    pub fn status_clients(&self, except: u64) -> Vec<(u64, Client)> {
        self.nodes
            .iter()
            .filter(|(id, proc)| **id != except && proc.alive() && !proc.is_paused())
            .filter_map(|(id, _)| Some((*id, self.direct_client(Some(*id)).ok()?)))
            .collect()
    }

    pub async fn wait_for_leader(&self, patience: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(id) = self.leader().await {
                return Ok(id);
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader within {patience:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every link touching `node` (both directions, and the client's link) set to `mode`.
    pub fn set_node_links(&self, node: u64, mode: Mode) {
        for ((from, to), proxy) in &self.links {
            if *from == node || *to == node {
                proxy.set(mode);
            }
        }
        self.client_links[&node].set(mode);
    }

    /// Every link between agent `name` and the nodes set to `mode`; with `uplink_only`, only
    /// what the agent sends (heartbeats, reports) is affected.
    pub fn set_agent_links(&self, name: &str, mode: Mode, uplink_only: bool) {
        for ((agent, _), proxy) in &self.agent_links {
            if agent == name {
                if uplink_only {
                    proxy.set_uplink_only(mode);
                } else {
                    proxy.set(mode);
                }
            }
        }
    }

    /// Whether any link of agent `name` is not passing (another fault holds it).
    pub fn agent_links_faulted(&self, name: &str) -> bool {
        self.agent_links
            .iter()
            .any(|((agent, _), proxy)| agent == name && proxy.mode() != Mode::Pass)
    }

    pub fn heal_network(&self) {
        for proxy in self
            .links
            .values()
            .chain(self.client_links.values())
            .chain(self.agent_links.values())
        {
            proxy.set(Mode::Pass);
        }
    }
}
