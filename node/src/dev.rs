//! `batond dev`: a real three-node cluster on this machine, as three `batond` processes (this same
//! binary) with data under one folder, for trying Baton with one command.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::config::DevArgs;

const NODES: u64 = 3;

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("removing {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let exe = std::env::current_exe().context("finding the batond binary")?;
    let addr = |i: u64| format!("127.0.0.1:{}", args.base_port as u64 + i - 1);
    let initial_cluster: Vec<String> = (1..=NODES).map(|i| format!("{i}={}", addr(i))).collect();
    let initial_cluster = initial_cluster.join(",");

    let mut children = Vec::new();
    for i in 1..=NODES {
        let data = args.data_dir.join(format!("node{i}"));
        let log = std::fs::File::create(args.data_dir.join(format!("node{i}.log")))
            .context("creating the node log file")?;
        let child = spawn_node(
            &exe,
            i,
            &addr(i),
            &data,
            &initial_cluster,
            args.metrics_base_port as u64 + i - 1,
            log,
        )
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
        let log = std::fs::File::create(args.data_dir.join("agent.log"))
            .context("creating the agent log file")?;
        let mut command = Command::new(&baton);
        command
            .args([
                "--endpoints",
                &endpoints,
                "agent",
                "--name",
                "dev-agent",
                "--slots",
                "4",
                "--metrics-listen",
                &agent_metrics,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        children.push(command.spawn().context("starting the dev agent")?);
    } else {
        eprintln!(
            "batond dev: no baton binary beside {}: no agent started (build baton-client)",
            exe.display()
        );
    }
    println!(
        "Baton dev cluster: {NODES} nodes on {endpoints} and one agent (data and logs in {data})\n\
         metrics: http://127.0.0.1:{m}/metrics (and the next two ports; the agent's: \
         http://{agent_metrics}/metrics)\n\n\
         Try it in another terminal:\n  \
         export BATON_ENDPOINTS={endpoints}\n  \
         baton cluster status --all\n  \
         baton submit --wait examples/onboard-employee.yaml\n  \
         baton submit --wait examples/build-test-deploy.yaml\n  \
         baton submit --wait examples/nightly-report.yaml\n  \
         baton agents\n  \
         baton list\n\n\
         Ctrl-C stops the cluster; the data stays for the next run (--fresh starts over).",
        data = args.data_dir.display(),
        m = args.metrics_base_port,
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let exited = async {
        // Any node or the agent exiting on its own is a failure worth stopping for.
        let (status, index, _) =
            futures::future::select_all(children.iter_mut().map(|c| Box::pin(c.wait()))).await;
        (index + 1, status)
    };
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        (node, status) = exited => Err((node, status)),
    };
    for child in &mut children {
        stop(child).await;
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

fn spawn_node(
    exe: &Path,
    id: u64,
    addr: &str,
    data: &Path,
    initial_cluster: &str,
    metrics_port: u64,
    log: std::fs::File,
) -> std::io::Result<Child> {
    let mut command = Command::new(exe);
    command
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--listen")
        .arg(addr)
        .arg("--data-dir")
        .arg(data)
        .arg("--initial-cluster")
        .arg(initial_cluster)
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    die_with_parent(&mut command);
    command.spawn()
}

/// The children die with `batond dev`, even if it is killed with SIGKILL.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM lets the node shut Raft down cleanly.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
