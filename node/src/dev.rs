//! `batond dev`: a real three-node cluster on this machine, as three `batond` processes (this same
//! binary) with data under one folder, for trying Baton with one command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use baton_launch::{NodeSpec, Security, SpawnOptions, Supervised};
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_security::devcerts;
use baton_security::{PeerIdentity, PeerRole, TlsFiles, TlsSettings};

use crate::certs::write_secret;
use crate::config::DevArgs;

const NODES: u64 = 3;

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("removing {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let creds = DevCredentials::prepare(&args.data_dir)?;
    let exe = std::env::current_exe().context("finding the batond binary")?;
    let port = |base: u16, i: u64, flag: &str| {
        u16::try_from(u64::from(base) + i - 1).with_context(|| {
            format!(
                "{flag} {base}: port {} is past 65535",
                u64::from(base) + i - 1
            )
        })
    };
    let mut listen: Vec<SocketAddr> = Vec::new();
    for i in 1..=NODES {
        listen.push(SocketAddr::from((
            [127, 0, 0, 1],
            port(args.base_port, i, "--base-port")?,
        )));
    }
    let addr = |i: u64| listen[i as usize - 1].to_string();
    let initial_cluster = baton_launch::initial_cluster((1..=NODES).zip(&listen));

    // Each child gets SIGTERM if `batond dev` dies, even by SIGKILL: the nodes stop as they would
    // for a supervisor.
    let options = SpawnOptions::default().terminated_with_launcher();
    let mut children = Vec::new();
    for i in 1..=NODES {
        let metrics = port(args.metrics_base_port, i, "--metrics-base-port")?;
        let http = port(args.http_base_port, i, "--http-base-port")?;
        let spec = NodeSpec::new(i, listen[i as usize - 1], &args.data_dir)
            .initial_cluster(initial_cluster.clone())
            .metrics(SocketAddr::from(([127, 0, 0, 1], metrics)))
            .http(SocketAddr::from(([127, 0, 0, 1], http)))
            .security(Security::Tls {
                pki: creds.pki_dir.clone(),
                bootstrap_token: Some(creds.client_dir.join("token")),
            });
        let child = Supervised::spawn_with(spec.command(&exe), &spec.log, options)
            .with_context(|| format!("starting node {i}"))?;
        children.push(child);
    }
    let endpoints: Vec<String> = (1..=NODES).map(addr).collect();
    let endpoints = endpoints.join(",");
    // One agent, from the `baton` binary built beside this one, so submitted steps run. Its
    // metrics are on the port after the nodes'.
    let agent_metrics = format!("127.0.0.1:{}", args.metrics_base_port as u64 + NODES);
    let baton = exe.with_file_name("baton");
    if baton.exists() {
        creds
            .ensure_agent_token(&addr(1))
            .await
            .context("creating the dev agent's token")?;
        let mut command = Command::new(&baton);
        command.arg("--credentials").arg(&creds.agent_dir).args([
            "--endpoints",
            &endpoints,
            "agent",
            "--name",
            "dev-agent",
            "--slots",
            "4",
            "--metrics-listen",
            &agent_metrics,
        ]);
        let agent = Supervised::spawn_with(command, &args.data_dir.join("agent.log"), options)
            .context("starting the dev agent")?;
        children.push(agent);
    } else {
        eprintln!(
            "batond dev: no baton binary beside {}: no agent started (build baton-client)",
            exe.display()
        );
    }
    let try_it = match save_context(&endpoints, &creds.client_dir) {
        Ok(path) => format!(
            "The `dev` context (these endpoints and the admin credentials) is saved in {} and \
             current: `baton` in any terminal talks to this cluster.\n\n\
             Try it in another terminal:\n",
            path.display()
        ),
        Err(error) => format!(
            "(The `dev` context was not saved: {error}.)\n\n\
             Try it in another terminal:\n  \
             export BATON_ENDPOINTS={endpoints}\n  \
             export BATON_CREDENTIALS={}\n",
            creds.client_dir.display()
        ),
    };
    println!(
        "Baton dev cluster: {NODES} nodes on {endpoints} and one agent (data and logs in {data})\n\
         console: https://127.0.0.1:{h}/ (sign in with the admin token in {client}/token; \
         the CA is {tls}/ca.pem)\n\
         JSON API: https://127.0.0.1:{h}/api/v1/ (and the next two ports; docs/HTTP.md)\n\
         metrics: http://127.0.0.1:{m}/metrics (and the next two ports; the agent's: \
         http://{agent_metrics}/metrics)\n\n\
         Mutual TLS and tokens are on: the CA and certificates are in {tls}, the admin token \
         and client certificate in {client} (see docs/SECURITY.md).\n\n\
         {try_it}  \
         baton cluster status --all\n  \
         baton submit --wait examples/onboard-employee.yaml\n  \
         baton submit --wait examples/build-test-deploy.yaml\n  \
         baton submit --wait examples/nightly-report.yaml\n  \
         baton agents\n  \
         baton list\n\n\
         Ctrl-C stops the cluster; the data stays for the next run (--fresh starts over).",
        data = args.data_dir.display(),
        m = args.metrics_base_port,
        h = args.http_base_port,
        tls = creds.pki_dir.display(),
        client = creds.client_dir.display(),
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let exited = async {
        // Any node or the agent exiting on its own is a failure worth stopping for.
        let (status, index, _) =
            futures::future::select_all(children.iter_mut().map(|c| Box::pin(c.exited()))).await;
        (index + 1, status)
    };
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        (node, status) = exited => Err((node, status)),
    };
    for child in &mut children {
        // SIGTERM lets a node shut Raft down cleanly.
        child.stop(Duration::from_secs(5)).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err((child, status)) => {
            let (what, log) = if child as u64 <= NODES {
                (format!("node {child}"), format!("node{child}.log"))
            } else {
                ("the agent".to_owned(), "agent.log".to_owned())
            };
            bail!(
                "{what} exited ({status:?}); see {}",
                args.data_dir.join(log).display()
            )
        }
    }
}

/// Saves (or replaces) the `dev` context and makes it current, with the credentials folder as an
/// absolute path so that it holds from any directory. Returns the file it wrote.
fn save_context(endpoints: &str, client_dir: &Path) -> anyhow::Result<PathBuf> {
    use baton_security::contexts::{Context, Contexts, default_path};
    let path = default_path()?;
    let mut contexts = Contexts::load(&path)?;
    contexts.set(
        "dev",
        Context {
            endpoints: endpoints.to_owned(),
            credentials: Some(std::fs::canonicalize(client_dir)?),
        },
    )?;
    contexts.current = Some("dev".into());
    contexts.save(&path)?;
    Ok(path)
}

/// The dev cluster's credentials, all under the data folder: a CA and a certificate per node
/// (`tls/`), and a credentials folder each for the CLI (`client/`: admin token) and the agent
/// (`agent/`), in the layout `baton --credentials` reads. Kept across runs; `--fresh` drops them.
struct DevCredentials {
    pki_dir: PathBuf,
    client_dir: PathBuf,
    agent_dir: PathBuf,
}

const DEV_AGENT: &str = "dev-agent";

impl DevCredentials {
    fn prepare(data_dir: &Path) -> anyhow::Result<DevCredentials> {
        let data_dir = std::path::absolute(data_dir).context("resolving the data folder")?;
        let creds = DevCredentials {
            pki_dir: data_dir.join("tls"),
            client_dir: data_dir.join("client"),
            agent_dir: data_dir.join("agent"),
        };
        let client = PeerIdentity::new(PeerRole::Client, "dev");
        let agent = PeerIdentity::new(PeerRole::Agent, DEV_AGENT);
        let mut identities: Vec<PeerIdentity> = (1..=NODES)
            .map(|i| PeerIdentity::new(PeerRole::Node, i.to_string()))
            .collect();
        identities.extend([client.clone(), agent.clone()]);
        devcerts::ensure(&creds.pki_dir, &identities).context("creating the dev certificates")?;
        for (dir, identity) in [(&creds.client_dir, &client), (&creds.agent_dir, &agent)] {
            devcerts::credentials_folder(&creds.pki_dir, identity, dir)?;
        }
        let admin_token = creds.client_dir.join("token");
        if !admin_token.exists() {
            let token = baton_security::token::generate()
                .map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
            write_secret(&admin_token, &token.text)
                .with_context(|| format!("writing {}", admin_token.display()))?;
        }
        Ok(creds)
    }

    /// Creates the agent's token through node `addr` with the admin token, unless it exists.
    async fn ensure_agent_token(&self, addr: &str) -> anyhow::Result<()> {
        let path = self.agent_dir.join("token");
        if path.exists() {
            return Ok(());
        }
        let admin = std::fs::read_to_string(self.client_dir.join("token"))?;
        let header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", admin.trim()).parse()?;
        let tls = TlsSettings::load(TlsFiles {
            ca: self.client_dir.join("ca.pem"),
            cert: self.client_dir.join("cert.pem"),
            key: self.client_dir.join("key.pem"),
        })?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_with_connector_lazy(baton_security::connector::TlsDialer::new(tls));
        let mut client =
            AdminServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", header.clone());
                Ok::<_, tonic::Status>(req)
            });
        // The cluster needs a leader, and the leader needs to record the bootstrap token.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let request = baton_proto::v1::CreateTokenRequest {
                name: DEV_AGENT.into(),
                role: "agent".into(),
                namespaces: Default::default(),
            };
            match client.create_token(request).await {
                Ok(created) => {
                    return write_secret(&path, &created.into_inner().token)
                        .with_context(|| format!("writing {}", path.display()));
                }
                Err(status) if std::time::Instant::now() < deadline => {
                    tracing::debug!(%status, "agent token not created yet");
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                Err(status) => bail!("node {addr}: {status}"),
            }
        }
    }
}
