//! `baton bench`: load a cluster (a running one, or one started for the run) with workflows of
//! a chosen shape from concurrent clients, and report throughput, latency and node resources.
//!
//! How it measures: one Watch of all workflows, opened at the answering node's applied index
//! before the first submit, sees every workflow's WORKFLOW_SUBMITTED, first STEP_ASSIGNED, each
//! STEP_FINISHED and WORKFLOW_FINISHED event. Their `time_ms` is stamped by the leader when it
//! proposes the entry, so the submit-to-start and submit-to-end latencies are in one clock (the
//! leader's; a leader change mid-run mixes two machines' clocks, which on one machine are one),
//! at millisecond resolution. The submit acknowledgement latency is the client's own, in µs.
//!
//! Code map: `options` reads and checks the flags into a `Plan`; `load` runs the submitting
//! clients; `track` follows the Watch into a `Track` per workflow; `kill` is `--kill-leader`;
//! `resources` samples CPU and memory around the run; `summary` turns all that into a
//! `report::Report`, which `report` prints; `shape` builds the spec; `cluster` starts and samples
//! the local cluster; `etcd` runs `--compare-etcd`; `usage` is a process's resources (shared by
//! `cluster`, `etcd` and `report`).

pub mod cluster;
pub mod etcd;
pub mod kill;
pub mod load;
pub mod options;
pub mod report;
pub mod resources;
pub mod shape;
pub mod summary;
pub mod track;
pub mod usage;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_client::{Client, ClientConfig, Endpoints, WorkflowWatch};
use tokio::sync::mpsc;

use self::cluster::LocalCluster;
pub use self::options::BenchArgs;
use self::options::Plan;
use self::report::Report;
use self::resources::{Before, Pids};
use self::summary::Measured;
use crate::cli::failure::{CallKind, Failure, client_failure};

/// Runs the bench and prints its report; stops a self-started cluster on every path out,
/// Ctrl-C included.
pub async fn run(
    endpoints: Endpoints,
    mut config: ClientConfig,
    json: bool,
    args: BenchArgs,
) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args).map_err(Failure::usage)?;
    let mut cluster: Option<LocalCluster> = None;
    let work = async {
        let (endpoints, pids) = match plan.local_cluster {
            Some((agents, slots)) => {
                let security = if plan.tls { "mTLS+tokens" } else { "plaintext" };
                eprintln!(
                    "bench: starting 3 nodes and {agents} agents ({slots} slots each, {security})"
                );
                let started = cluster.insert(LocalCluster::start(agents, slots, plan.tls).await?);
                config.credentials = started.credentials.clone();
                let pids = Pids {
                    // Restarted nodes are new processes: no CPU figure spans the run.
                    nodes: if plan.kill_every.is_some() {
                        Vec::new()
                    } else {
                        started.node_pids()
                    },
                    agents: Some(started.agent_pids()),
                };
                (started.endpoints.clone(), pids)
            }
            None => (endpoints, Pids::default()),
        };
        let client = Client::with_config(endpoints, config)
            .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
        let killer = plan.kill_every.zip(cluster.as_mut());
        measure(&client, &plan, &pids, killer).await
    };
    let result = tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(Failure::failed("bench: interrupted")),
    };
    if let Some(cluster) = cluster.take() {
        cluster.stop().await;
    }
    let mut report = result?;
    if let Some(binary) = plan.compare_etcd.clone() {
        let etcd = etcd::run(
            binary,
            plan.clients,
            plan.stop,
            plan.rate,
            report.workflows_accepted_per_second,
        );
        report.etcd = Some(tokio::select! {
            result = etcd => result?,
            _ = tokio::signal::ctrl_c() => return Err(Failure::failed("bench: interrupted")),
        });
    }
    let mut stdout = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        writeln!(stdout, "{text}").context("writing to stdout")?;
    } else {
        write!(stdout, "{}", report::render(&report)).context("writing to stdout")?;
    }
    if report.accepted == 0 {
        return Err(Failure::failed("bench: no workflow was accepted"));
    }
    if report.workflows_unfinished > 0 {
        return Err(Failure::failed(format!(
            "bench: {} workflows did not finish within --drain-timeout",
            report.workflows_unfinished
        )));
    }
    Ok(())
}

/// One run against `client`: the Watch opened first, then the load, with `--kill-leader` the
/// kills alongside; ends when every accepted workflow finished or the drain timeout passed.
async fn measure(
    client: &Client,
    plan: &Plan,
    pids: &Pids,
    killer: Option<(Duration, &mut LocalCluster)>,
) -> anyhow::Result<Report> {
    let status = client
        .cluster_status()
        .await
        .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let watch = tokio::spawn(track::forward_events(
        WorkflowWatch::new(client.clone(), 0, status.applied_index + 1),
        events_tx,
    ));
    let before = Before::sample(pids);
    let started = Instant::now();

    let (ids_tx, ids_rx) = mpsc::unbounded_channel();
    let load = load::start(client, plan, started, ids_tx);
    let shared = load.shared.clone();
    let tracking = tokio::spawn(track::track(
        events_rx,
        ids_rx,
        shared.clone(),
        plan.drain_timeout,
    ));
    let submitting = tokio_util::sync::CancellationToken::new();
    let kills = async {
        match killer {
            Some((every, cluster)) => kill::kill_leaders(cluster, client, every, &submitting).await,
            None => Ok(Vec::new()),
        }
    };
    let submits = async {
        let acks = load.finish().await?;
        submitting.cancel();
        anyhow::Ok(acks)
    };
    let (kills, acks) = tokio::join!(kills, submits);
    let (kills, acks) = (kills?, acks?);
    let submit_seconds = started.elapsed().as_secs_f64();
    let (tracks, assigned_ms) = tracking.await.context("the bench tracker panicked")?;
    watch.abort();
    let wall_seconds = started.elapsed().as_secs_f64();
    let used = before.used(pids, wall_seconds);
    let measured = Measured {
        submit_seconds,
        acks,
        kills,
        assigned_ms,
        used,
    };
    Ok(summary::report(&tracks, plan, &shared, measured))
}
