//! A throwaway cluster for `baton bench --start-cluster`: three `batond` processes (the binary
//! beside this `baton`) on free loopback ports with data in a temporary folder, and agents
//! running this same `baton` binary (whose executor runs noop steps). Every child dies with the
//! bench: stopped by [`LocalCluster::stop`], SIGKILLed when dropped on an error path, and sent
//! SIGTERM by the kernel if the bench itself is killed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_client::{Client, ClientConfig, CredentialSources, Credentials, Endpoints};
use baton_security::TlsFiles;
use tokio::process::{Child, Command};

use super::usage::NodeUsage;

const NODES: u64 = 3;
/// How long the cluster may take to elect a leader and see every agent.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LocalCluster {
    nodes: Vec<(u64, Child)>,
    /// `batond` and its arguments, per node (same order as `nodes`), to restart one.
    node_commands: Vec<(PathBuf, Vec<OsString>)>,
    agents: Vec<Child>,
    pub endpoints: Endpoints,
    /// What clients of this cluster present: nothing (plaintext), or with `tls` the `bench`
    /// client certificate and the bootstrap admin token.
    pub credentials: Credentials,
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
        let ports = free_ports(NODES as usize)?;
        let addr = |i: u64| format!("127.0.0.1:{}", ports[i as usize - 1]);
        let initial_cluster: Vec<String> =
            (1..=NODES).map(|i| format!("{i}={}", addr(i))).collect();
        let initial_cluster = initial_cluster.join(",");
        let pki = data.path().join("pki");
        let security_args: Vec<OsString> = if tls {
            let mut certs = std::process::Command::new(&batond);
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
            vec![
                "--bootstrap-token-file".into(),
                pki.join("bootstrap-token").into(),
            ]
        } else {
            vec!["--insecure".into()]
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
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            node_commands: Vec::new(),
            agents: Vec::new(),
            endpoints: Endpoints::parse(&(1..=NODES).map(addr).collect::<Vec<_>>().join(","))?,
            credentials,
            data,
        };
        for id in 1..=NODES {
            let mut node_args = security_args.clone();
            if tls {
                // `batond certs` writes the layout `TlsFiles::in_dir` reads.
                node_args.extend(TlsFiles::in_dir(&pki, &format!("node-{id}")).batond_args());
            }
            node_args.extend(
                [
                    "--node-id".to_string(),
                    id.to_string(),
                    "--listen".to_string(),
                    addr(id),
                    "--data-dir".to_string(),
                    cluster
                        .data
                        .path()
                        .join(format!("node{id}"))
                        .display()
                        .to_string(),
                    "--initial-cluster".to_string(),
                    initial_cluster.clone(),
                ]
                .map(OsString::from),
            );
            cluster.node_commands.push((batond.clone(), node_args));
            let child = cluster.spawn_node(id)?;
            cluster.nodes.push((id, child));
        }
        let agent_credentials = pki.join("agent-bench");
        if tls {
            // The agents' token, made with the admin token once a leader has recorded it.
            let token = cluster.create_agent_token().await?;
            std::fs::write(agent_credentials.join("token"), token)
                .context("writing the agents' token")?;
        }
        for i in 1..=agents {
            let log = log_file(cluster.data.path(), &format!("agent{i}.log"))?;
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
            let child = spawn(command, log).with_context(|| format!("starting agent {i}"))?;
            cluster.agents.push(child);
        }
        cluster.wait_ready(agents).await?;
        Ok(cluster)
    }

    fn spawn_node(&self, id: u64) -> anyhow::Result<Child> {
        let (batond, args) = &self.node_commands[id as usize - 1];
        let path = self.data.path().join(format!("node{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut command = Command::new(batond);
        command.args(args);
        spawn(command, log).with_context(|| format!("starting node {id}"))
    }

    /// SIGKILLs node `id` and starts it again on its data (it rejoins as a follower).
    pub async fn kill_and_restart(&mut self, id: u64) -> anyhow::Result<()> {
        let index = self
            .nodes
            .iter()
            .position(|(node, _)| *node == id)
            .with_context(|| format!("no bench node {id}"))?;
        self.nodes[index].1.kill().await.context("killing a node")?;
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
            match client.create_token("bench-agents", "agent").await {
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
            .filter_map(|(id, child)| child.id().map(|pid| (*id, pid)))
            .collect()
    }

    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().filter_map(Child::id).collect()
    }

    /// SIGTERM to every child (agents first, so that they do not retry against dying nodes),
    /// then SIGKILL to any still running after 5 s.
    pub async fn stop(mut self) {
        for child in &mut self.agents {
            stop(child).await;
        }
        for (_, child) in &mut self.nodes {
            stop(child).await;
        }
    }
}

pub(super) fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path: PathBuf = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

pub(super) fn spawn(mut command: Command, log: std::fs::File) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe, as pre_exec requires. The runtime is single-threaded,
    // and PR_SET_PDEATHSIG fires when the forking thread exits: the main thread lives as long
    // as the process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command.spawn()?)
}

pub(super) async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Free loopback ports: bound to learn them, then released for the nodes to bind.
pub(super) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A process's CPU time so far and memory now, from /proc.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_ticks: cpu_ticks(&stat)?,
        rss_kib: status_kib(&status, "VmRSS")?,
        rss_peak_kib: status_kib(&status, "VmHWM")?,
    })
}

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

/// utime + stime from /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last ')': utime and stime are fields 14 and 15.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of /proc/PID/status.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (bat) d (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    731 269 0 0 20 0 9 0 100 2000000 3000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tbatond\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(70000));
        assert_eq!(status_kib(status, "VmHWM"), Some(81234));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("our own /proc entry");
        assert!(s.rss_kib > 0 && s.rss_peak_kib >= s.rss_kib, "{s:?}");
    }
}
