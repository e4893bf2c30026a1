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
    println!(
        "Baton dev cluster: {NODES} nodes on {endpoints} (data and logs in {data})\n\
         metrics: http://127.0.0.1:{m}/metrics (and the next two ports)\n\n\
         Try it in another terminal:\n  \
         export BATON_ENDPOINTS={endpoints}\n  \
         baton cluster status --all\n  \
         baton submit examples/onboard-employee.yaml\n  \
         baton list\n\n\
         Ctrl-C stops the cluster; the data stays for the next run (--fresh starts over).",
        data = args.data_dir.display(),
        m = args.metrics_base_port,
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let exited = async {
        // Any node exiting on its own is a failure worth stopping for.
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
        Err((node, status)) => bail!(
            "node {node} exited ({status:?}); see {}",
            args.data_dir.join(format!("node{node}.log")).display()
        ),
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
    // The nodes die with `batond dev`, even if it is killed with SIGKILL.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
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
