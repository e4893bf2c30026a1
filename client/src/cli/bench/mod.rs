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
//! Code map: `shape` builds the spec, `cluster` starts and samples the local cluster, `report`
//! summarises and prints, `usage` is a process's resources (shared by `cluster`, `etcd` and
//! `report`), `etcd` runs `--compare-etcd`.

pub mod cluster;
pub mod etcd;
pub mod report;
pub mod shape;
pub mod usage;

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_client::proto::{EventKind, WorkflowEvent, WorkflowState};
use baton_client::{Client, ClientConfig, Endpoints, WatchUpdate, WorkflowWatch};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use self::cluster::LocalCluster;
use self::report::{LatencySummary, Report, new_histogram, per_second, record};
use self::shape::Shape;
use crate::cli::failure::{CallKind, Failure, client_failure};

/// Concurrent clients at most: each is a task with a submit in flight.
const CLIENTS_MAX: u32 = 10_000;
/// Self-started agents at most (each is a process).
const AGENTS_MAX: u32 = 64;
/// Without `--count` or `--duration`, submit for this long.
const DURATION_DEFAULT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Start a throwaway cluster for the run (3 batond processes from the binary beside baton,
    /// on free loopback ports, data in a temporary folder, plus agents), instead of using
    /// --endpoints; everything is stopped and removed at the end.
    #[arg(long)]
    pub start_cluster: bool,

    /// With --start-cluster: secure the cluster as in production (mutual TLS on every link,
    /// bearer tokens checked on every call) instead of plaintext, to measure what that costs.
    #[arg(long, requires = "start_cluster")]
    pub tls: bool,

    /// Agents to start with --start-cluster [default: 2].
    #[arg(long, value_name = "N")]
    pub agents: Option<u32>,

    /// Slots of each started agent [default: 64].
    #[arg(long, value_name = "N")]
    pub agent_slots: Option<u32>,

    /// What each workflow looks like (all steps are noop).
    #[arg(long, value_enum, default_value_t = Shape::Single)]
    pub shape: Shape,

    /// K: the chain's length, or the fan-out's width (after one root step) [default: 4].
    #[arg(long, value_name = "K")]
    pub steps: Option<u32>,

    /// Give every workflow its own spec (an `input` value `run: N`), so the cluster shares no
    /// decoded spec between them: what workflows that all differ cost. By default every
    /// workflow is submitted with the same spec, as runs of one definition are.
    #[arg(long)]
    pub distinct_specs: bool,

    /// Concurrent clients, each with one submit in flight.
    #[arg(short = 'c', long, default_value_t = 16, value_name = "C")]
    pub clients: u32,

    /// Workflows per call: above 1, each client sends SubmitBatch calls of this many (one log
    /// entry each) instead of one Submit per workflow.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: u32,

    /// Submit this many workflows in all, then stop.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Submit for this long, e.g. 30s, 2m [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Fixed arrival rate: workflows per second across all clients (default: as fast as the
    /// clients go).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,

    /// With --start-cluster: every --kill-every, SIGKILL the leader and restart it, and report
    /// the time from each kill to the next committed step assignment (node CPU is then not
    /// reported: the killed nodes are new processes).
    #[arg(long)]
    pub kill_leader: bool,

    /// How often --kill-leader kills the leader.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub kill_every: Duration,

    /// After the run, start a three-member etcd on this machine (free loopback ports, a
    /// temporary folder) and put keys into it with the same clients, count or duration and
    /// rate; report both and Baton's accepted workflows/s over etcd's puts/s.
    #[arg(long, conflicts_with = "kill_leader")]
    pub compare_etcd: bool,

    /// The etcd binary for --compare-etcd (Debian: the etcd-server package).
    #[arg(long, default_value = "etcd", value_name = "PATH")]
    pub etcd_binary: std::path::PathBuf,

    /// After the last submit, how long to wait for the workflows to finish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let ms = baton_proto::spec::parse_duration_ms(text).map_err(|error| error.to_string())?;
    if ms == 0 {
        return Err("must be more than 0".to_string());
    }
    Ok(Duration::from_millis(ms))
}

/// When the submitting stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Count(u64),
    Duration(Duration),
}

/// The checked arguments of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub shape: Shape,
    pub steps_per_workflow: u32,
    /// Every workflow's spec differs (`--distinct-specs`).
    pub distinct_specs: bool,
    pub clients: u32,
    /// Workflows per submit call (`--batch`).
    pub batch: u32,
    pub stop: Stop,
    pub rate: Option<f64>,
    pub drain_timeout: Duration,
    /// `(agents, slots each)` when the bench starts its own cluster.
    pub local_cluster: Option<(u32, u32)>,
    /// The started cluster is secured (`--tls`).
    pub tls: bool,
    /// With `--kill-leader`: how often.
    pub kill_every: Option<Duration>,
    /// With `--compare-etcd`: the etcd binary.
    pub compare_etcd: Option<std::path::PathBuf>,
}

impl Plan {
    /// Every check of the arguments, each error naming its flag.
    pub fn from_args(args: &BenchArgs) -> Result<Plan, String> {
        let steps_per_workflow = shape::steps_per_workflow(args.shape, args.steps)?;
        if args.clients == 0 || args.clients > CLIENTS_MAX {
            return Err(format!(
                "--clients must be 1..={CLIENTS_MAX}, not {}",
                args.clients
            ));
        }
        let batch_max = baton_proto::limits::SUBMIT_BATCH_ITEMS_MAX as u32;
        if args.batch == 0 || args.batch > batch_max {
            return Err(format!(
                "--batch must be 1..={batch_max}, not {}",
                args.batch
            ));
        }
        let stop = match (args.count, args.duration) {
            (Some(0), _) => return Err("--count must be at least 1".to_string()),
            (Some(n), _) => Stop::Count(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(DURATION_DEFAULT),
        };
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("--rate must be a positive number, not {rate}"));
        }
        let local_cluster = if args.start_cluster {
            let agents = args.agents.unwrap_or(2);
            let slots = args.agent_slots.unwrap_or(64);
            if agents == 0 || agents > AGENTS_MAX {
                return Err(format!("--agents must be 1..={AGENTS_MAX}, not {agents}"));
            }
            if slots == 0 {
                return Err("--agent-slots must be at least 1".to_string());
            }
            Some((agents, slots))
        } else {
            if args.agents.is_some() || args.agent_slots.is_some() {
                return Err(
                    "--agents and --agent-slots need --start-cluster (against --endpoints, \
                     start the agents yourself)"
                        .to_string(),
                );
            }
            None
        };
        if args.kill_leader && local_cluster.is_none() {
            return Err("--kill-leader needs --start-cluster".to_string());
        }
        Ok(Plan {
            kill_every: args.kill_leader.then_some(args.kill_every),
            compare_etcd: args.compare_etcd.then(|| args.etcd_binary.clone()),
            shape: args.shape,
            steps_per_workflow,
            distinct_specs: args.distinct_specs,
            clients: args.clients,
            batch: args.batch,
            stop,
            rate: args.rate,
            drain_timeout: args.drain_timeout,
            local_cluster,
            tls: args.tls,
        })
    }
}

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

/// What the submitting clients share.
struct Submitters {
    claimed: AtomicU64,
    /// Numbers the specs of `--distinct-specs`.
    sequence: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// Fixed arrival rate: each submit waits for a tick (tokio's lock: it is held across the
    /// tick's await).
    pacer: Option<tokio::sync::Mutex<tokio::time::Interval>>,
}

impl Submitters {
    /// Counts `n` workflows not accepted; the first reason is kept for the report.
    fn failed(&self, n: u64, reason: String) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("not poisoned");
        first.get_or_insert(reason);
    }
}

/// One SubmitBatch item: its workflow id, or why it was not accepted.
fn batch_outcome(result: baton_proto::v1::SubmitBatchResult) -> Result<u64, String> {
    use baton_proto::v1::submit_batch_result::Outcome;
    match result.outcome {
        Some(Outcome::Submitted(response)) => Ok(response.workflow_id),
        Some(Outcome::Rejected(reason)) => Err(format!("rejected: {reason}")),
        None => Err("a batch result without an outcome".to_string()),
    }
}

/// The processes whose resources the report shows.
#[derive(Default)]
struct Pids {
    /// `(node id, pid)`: self-started nodes only.
    nodes: Vec<(u64, u32)>,
    /// Self-started agents; `None` against `--endpoints`.
    agents: Option<Vec<u32>>,
}

/// CPU seconds that `pids` used so far, from /proc; `None` if one cannot be read.
fn cpu_seconds(pids: &[u32], ticks_per_second: u64) -> Option<f64> {
    let ticks = pids
        .iter()
        .map(|&pid| cluster::sample(pid).map(|s| s.cpu_ticks))
        .sum::<Option<u64>>()?;
    Some(ticks as f64 / ticks_per_second as f64)
}

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
    let watch = tokio::spawn(forward_events(
        WorkflowWatch::new(client.clone(), 0, status.applied_index + 1),
        events_tx,
    ));
    let ticks_per_second = cluster::clock_ticks_per_second();
    let before: Vec<_> = pids
        .nodes
        .iter()
        .map(|&(_, pid)| cluster::sample(pid))
        .collect();
    let own_pid = [std::process::id()];
    let bench_before = cpu_seconds(&own_pid, ticks_per_second);
    let agents_before = pids
        .agents
        .as_deref()
        .and_then(|agents| cpu_seconds(agents, ticks_per_second));
    let started = Instant::now();

    let spec = shape::build_spec(
        plan.shape,
        plan.steps_per_workflow,
        &format!("bench-{:?}", plan.shape).to_lowercase(),
    );
    let shared = Arc::new(Submitters {
        claimed: AtomicU64::new(0),
        sequence: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        pacer: plan.rate.map(|rate| {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            tokio::sync::Mutex::new(interval)
        }),
    });
    let (ids_tx, ids_rx) = mpsc::unbounded_channel();
    let deadline = match plan.stop {
        Stop::Duration(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let mut workers = Vec::new();
    for _ in 0..plan.clients {
        let (client, spec, shared, ids_tx) =
            (client.clone(), spec.clone(), shared.clone(), ids_tx.clone());
        let stop = plan.stop;
        let (distinct_specs, batch) = (plan.distinct_specs, u64::from(plan.batch));
        workers.push(tokio::spawn(async move {
            let mut acks = new_histogram();
            // How many workflows the next call carries: 0 when the run is over.
            let claim = |shared: &Submitters| match stop {
                Stop::Count(n) => {
                    let first = shared.claimed.fetch_add(batch, Ordering::Relaxed);
                    n.saturating_sub(first).min(batch)
                }
                Stop::Duration(_) => {
                    if deadline.is_some_and(|d| Instant::now() < d) {
                        batch
                    } else {
                        0
                    }
                }
            };
            loop {
                let n = claim(&shared);
                if n == 0 {
                    break;
                }
                if let Some(pacer) = &shared.pacer {
                    let mut pacer = pacer.lock().await;
                    for _ in 0..n {
                        pacer.tick().await;
                    }
                    drop(pacer);
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                let specs: Vec<_> = (0..n)
                    .map(|_| {
                        let mut spec = spec.clone();
                        if distinct_specs {
                            let run = shared.sequence.fetch_add(1, Ordering::Relaxed);
                            spec.input.insert("run".to_string(), run.to_string());
                        }
                        spec
                    })
                    .collect();
                let sent = Instant::now();
                let result = if n == 1 && batch == 1 {
                    let spec = specs.into_iter().next().expect("one spec");
                    client
                        .submit(spec, None)
                        .await
                        .map(|r| vec![Ok(r.workflow_id)])
                } else {
                    let items = specs.into_iter().map(|spec| (spec, None)).collect();
                    client
                        .submit_batch(items)
                        .await
                        .map(|results| results.into_iter().map(batch_outcome).collect())
                };
                match result {
                    Ok(outcomes) => {
                        record(&mut acks, sent.elapsed().as_micros() as u64);
                        for outcome in outcomes {
                            match outcome {
                                Ok(id) => {
                                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                                    let _ = ids_tx.send(id);
                                }
                                Err(reason) => shared.failed(1, reason),
                            }
                        }
                    }
                    Err(error) => shared.failed(n, error.to_string()),
                }
            }
            acks
        }));
    }
    drop(ids_tx);
    let tracking = tokio::spawn(track(events_rx, ids_rx, shared.clone(), plan.drain_timeout));
    let submitting = tokio_util::sync::CancellationToken::new();
    let kills = async {
        match killer {
            Some((every, cluster)) => kill_leaders(cluster, client, every, &submitting).await,
            None => Ok(Vec::new()),
        }
    };
    let submits = async {
        let mut acks = new_histogram();
        for worker in workers {
            acks.add(worker.await.context("a bench client panicked")?)
                .expect("histograms of equal bounds add");
        }
        submitting.cancel();
        anyhow::Ok(acks)
    };
    let (kills, acks) = tokio::join!(kills, submits);
    let (kills, acks) = (kills?, acks?);
    let submit_seconds = started.elapsed().as_secs_f64();
    let (tracks, assigned_ms) = tracking.await.context("the bench tracker panicked")?;
    watch.abort();
    let wall_seconds = started.elapsed().as_secs_f64();
    let percent = |before: Option<f64>, after: Option<f64>| {
        Some(100.0 * (after? - before?).max(0.0) / wall_seconds)
    };
    let bench_cpu_percent =
        percent(bench_before, cpu_seconds(&own_pid, ticks_per_second)).unwrap_or(0.0);
    let agents_cpu_percent = percent(
        agents_before,
        pids.agents
            .as_deref()
            .and_then(|agents| cpu_seconds(agents, ticks_per_second)),
    );
    let nodes = pids
        .nodes
        .iter()
        .zip(before)
        .filter_map(|(&(node_id, pid), before)| cluster::usage(node_id, pid, before, wall_seconds))
        .collect();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().expect("not poisoned").clone();
    let mut report = summarise(&tracks, plan);
    report.submitted = accepted + errors;
    report.accepted = accepted;
    report.submit_errors = errors;
    report.first_submit_error = first_error;
    report.submit_seconds = submit_seconds;
    report.workflows_accepted_per_second = per_second(accepted, submit_seconds);
    report.submit_ack = LatencySummary::of(&acks);
    report.nodes = nodes;
    if plan.kill_every.is_some() {
        let mut failover = new_histogram();
        let times = failovers_ms(&kills, &assigned_ms);
        for ms in times.iter().flatten() {
            record(&mut failover, ms * 1000);
        }
        report.leader_kills = Some(kills.len() as u64);
        report.kills_without_assignment = Some(times.iter().filter(|t| t.is_none()).count() as u64);
        report.kill_to_assignment = Some(LatencySummary::of(&failover));
    }
    report.agents_cpu_percent = agents_cpu_percent;
    report.bench_cpu_percent = bench_cpu_percent;
    Ok(report)
}

/// Until the submitting ends: every `every`, SIGKILL the leader and restart it. Returns the
/// wall-clock times (ms since the epoch) of the kills.
async fn kill_leaders(
    cluster: &mut LocalCluster,
    client: &Client,
    every: Duration,
    submitting: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<u64>> {
    let mut kills = Vec::new();
    loop {
        tokio::select! {
            _ = submitting.cancelled() => return Ok(kills),
            _ = tokio::time::sleep(every) => {}
        }
        let leader = match client.cluster_status().await {
            Ok(status) if status.leader_id != 0 => status.leader_id,
            _ => continue, // no leader yet: try again next round
        };
        kills.push(now_ms());
        cluster.kill_and_restart(leader).await?;
        eprintln!("bench: killed and restarted node {leader} (the leader)");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// For each kill, the time to the first step assignment proposed after it (leader time and
/// kill time are one machine's clock); `None` when no assignment followed.
pub fn failovers_ms(kills_ms: &[u64], assigned_ms: &[u64]) -> Vec<Option<u64>> {
    let mut assigned = assigned_ms.to_vec();
    assigned.sort_unstable();
    kills_ms
        .iter()
        .map(|&kill| {
            let next = assigned.partition_point(|&a| a <= kill);
            assigned.get(next).map(|&a| a - kill)
        })
        .collect()
}

/// Keeps the watch of all workflows going, into a channel (so that the tracker's select never
/// cancels the watch halfway through a reconnect).
async fn forward_events(mut watch: WorkflowWatch, events: mpsc::UnboundedSender<WorkflowEvent>) {
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => {
                if events.send(event).is_err() {
                    return;
                }
            }
            Ok(Some(WatchUpdate::Resumed { from_index, reason })) => {
                tracing::info!(from_index, %reason, "bench: watch resumed");
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "bench: the watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What the events said about one workflow (times are the leader's, in ms).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Track {
    pub submitted_ms: Option<u64>,
    pub first_assigned_ms: Option<u64>,
    pub finished: Option<(u64, WorkflowState)>,
    pub steps_finished: u64,
}

impl Track {
    pub fn apply(&mut self, event: &WorkflowEvent) {
        match EventKind::try_from(event.kind) {
            Ok(EventKind::WorkflowSubmitted) => self.submitted_ms = Some(event.time_ms),
            Ok(EventKind::StepAssigned) => {
                self.first_assigned_ms.get_or_insert(event.time_ms);
            }
            Ok(EventKind::StepFinished) => self.steps_finished += 1,
            Ok(EventKind::WorkflowFinished) => {
                let state =
                    WorkflowState::try_from(event.workflow_state).unwrap_or(WorkflowState::Failed);
                self.finished = Some((event.time_ms, state));
            }
            _ => {}
        }
    }
}

/// Follows events until every accepted workflow has finished, or the drain timeout after the
/// last submit; returns the tracks of the accepted workflows only.
async fn track(
    mut events: mpsc::UnboundedReceiver<WorkflowEvent>,
    mut ids: mpsc::UnboundedReceiver<u64>,
    shared: Arc<Submitters>,
    drain_timeout: Duration,
) -> (HashMap<u64, Track>, Vec<u64>) {
    let mut tracks: HashMap<u64, Track> = HashMap::new();
    // Every assignment's time, any workflow's: what --kill-leader measures failover against.
    let mut assigned_ms = Vec::new();
    let mut ours: HashSet<u64> = HashSet::new();
    let mut open = 0usize; // ours, not finished
    let mut finished = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            id = ids.recv(), if drain_deadline.is_none() => match id {
                Some(id) => {
                    if ours.insert(id) {
                        if tracks.get(&id).is_some_and(|t| t.finished.is_some()) {
                            finished += 1;
                        } else {
                            open += 1;
                        }
                    }
                }
                None => drain_deadline = Some(Instant::now() + drain_timeout),
            },
            event = events.recv() => {
                let Some(event) = event else { break };
                if event.kind == EventKind::StepAssigned as i32 {
                    assigned_ms.push(event.time_ms);
                }
                let track = tracks.entry(event.workflow_id).or_default();
                let was_finished = track.finished.is_some();
                track.apply(&event);
                if !was_finished && track.finished.is_some() && ours.contains(&event.workflow_id) {
                    open -= 1;
                    finished += 1;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!(
                "\rbench: accepted {}, errors {}, finished {finished}   ",
                shared.accepted.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
            );
        }
        if let Some(deadline) = drain_deadline
            && (open == 0 || Instant::now() >= deadline)
        {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    tracks.retain(|id, _| ours.contains(id));
    for id in ours {
        tracks.entry(id).or_default();
    }
    (tracks, assigned_ms)
}

/// The latency and completion part of the report, from the tracks of the accepted workflows.
pub fn summarise(tracks: &HashMap<u64, Track>, plan: &Plan) -> Report {
    let mut to_start: Histogram<u64> = new_histogram();
    let mut to_end: Histogram<u64> = new_histogram();
    let (mut succeeded, mut failed, mut unfinished, mut steps) = (0, 0, 0, 0);
    let (mut first_ms, mut last_ms) = (u64::MAX, 0u64);
    for track in tracks.values() {
        steps += track.steps_finished;
        if let Some(submitted) = track.submitted_ms {
            first_ms = first_ms.min(submitted);
            if let Some(assigned) = track.first_assigned_ms {
                record(&mut to_start, assigned.saturating_sub(submitted) * 1000);
            }
            if let Some((end, _)) = track.finished {
                record(&mut to_end, end.saturating_sub(submitted) * 1000);
            }
        }
        match track.finished {
            Some((end, state)) => {
                last_ms = last_ms.max(end);
                if state == WorkflowState::Succeeded {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
            None => unfinished += 1,
        }
    }
    let run_seconds = if last_ms >= first_ms {
        (last_ms - first_ms) as f64 / 1000.0
    } else {
        0.0
    };
    Report {
        shape: format!("{:?}", plan.shape).to_lowercase(),
        steps_per_workflow: plan.steps_per_workflow,
        distinct_specs: plan.distinct_specs,
        clients: plan.clients,
        batch: plan.batch,
        rate: plan.rate,
        submitted: 0,
        accepted: 0,
        submit_errors: 0,
        first_submit_error: None,
        submit_seconds: 0.0,
        workflows_accepted_per_second: 0.0,
        workflows_succeeded: succeeded,
        workflows_failed: failed,
        workflows_unfinished: unfinished,
        steps_completed: steps,
        run_seconds,
        steps_completed_per_second: per_second(steps, run_seconds),
        submit_ack: LatencySummary::of(&new_histogram()),
        submit_to_start: LatencySummary::of(&to_start),
        submit_to_end: LatencySummary::of(&to_end),
        nodes: Vec::new(),
        agents_cpu_percent: None,
        bench_cpu_percent: 0.0,
        leader_kills: None,
        kills_without_assignment: None,
        kill_to_assignment: None,
        etcd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(["baton", "bench"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Bench(bench) = cli.command else {
            panic!("not a bench")
        };
        Plan::from_args(&bench)
    }

    #[test]
    fn defaults() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.shape, Shape::Single);
        assert_eq!(p.steps_per_workflow, 1);
        assert_eq!(p.clients, 16);
        assert_eq!(p.batch, 1);
        assert_eq!(p.stop, Stop::Duration(DURATION_DEFAULT));
        assert_eq!(p.rate, None);
        assert_eq!(p.local_cluster, None);
        let p = plan(&["--start-cluster", "--count", "50", "--shape", "fanout"]).unwrap();
        assert_eq!(p.local_cluster, Some((2, 64)));
        assert_eq!(p.stop, Stop::Count(50));
        assert_eq!(p.steps_per_workflow, 5);
    }

    #[test]
    fn every_flag_is_read() {
        let p = plan(&[
            "--start-cluster",
            "--agents",
            "3",
            "--agent-slots",
            "8",
            "--shape",
            "chain",
            "--steps",
            "6",
            "-c",
            "4",
            "--batch",
            "20",
            "--duration",
            "2m",
            "--rate",
            "250.5",
            "--drain-timeout",
            "5s",
        ])
        .unwrap();
        assert_eq!(
            p,
            Plan {
                shape: Shape::Chain,
                steps_per_workflow: 6,
                distinct_specs: false,
                clients: 4,
                batch: 20,
                stop: Stop::Duration(Duration::from_secs(120)),
                rate: Some(250.5),
                drain_timeout: Duration::from_secs(5),
                local_cluster: Some((3, 8)),
                tls: false,
                kill_every: None,
                compare_etcd: None,
            }
        );
    }

    #[test]
    fn bad_arguments_name_their_flag() {
        for (args, flag) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--batch", "0"], "--batch"),
            (&["--batch", "257"], "--batch"),
            (&["--count", "0"], "--count"),
            (&["--count", "5", "--duration", "1s"], "--duration"),
            (&["--duration", "0s"], "--duration"),
            (&["--rate", "0"], "--rate"),
            (&["--rate=-3"], "--rate"),
            (&["--rate", "NaN"], "--rate"),
            (&["--steps", "3"], "--steps"),
            (&["--shape", "chain", "--steps", "0"], "--steps"),
            (&["--shape", "tree"], "--shape"),
            (&["--agents", "2"], "--agents"),
            (&["--kill-leader"], "--kill-leader"),
            (
                &["--start-cluster", "--kill-leader", "--compare-etcd"],
                "--compare-etcd",
            ),
            (
                &["--start-cluster", "--kill-leader", "--kill-every", "0s"],
                "--kill-every",
            ),
            (&["--start-cluster", "--agents", "0"], "--agents"),
            (&["--start-cluster", "--agent-slots", "0"], "--agent-slots"),
        ] {
            let error = plan(args).unwrap_err();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn kill_leader_plan_and_failover_times() {
        let p = plan(&["--start-cluster", "--kill-leader", "--kill-every", "2s"]).unwrap();
        assert_eq!(p.kill_every, Some(Duration::from_secs(2)));
        // Kills at 100, 200, 300; assignments at 90, 100 (before or at the first kill), 350,
        // 360: the first two kills wait for 350, the third too; a kill at 400 sees none.
        assert_eq!(
            failovers_ms(&[100, 200, 300, 400], &[360, 90, 350, 100]),
            [Some(250), Some(150), Some(50), None]
        );
        assert!(failovers_ms(&[], &[1, 2]).is_empty());
    }

    #[test]
    fn compare_etcd_plan() {
        let p = plan(&["--compare-etcd", "--etcd-binary", "/opt/etcd"]).unwrap();
        assert_eq!(p.compare_etcd, Some(std::path::PathBuf::from("/opt/etcd")));
        assert_eq!(plan(&[]).unwrap().compare_etcd, None);
    }

    fn event(kind: EventKind, workflow_id: u64, time_ms: u64) -> WorkflowEvent {
        WorkflowEvent {
            workflow_id,
            time_ms,
            kind: kind as i32,
            workflow_state: WorkflowState::Succeeded as i32,
            ..WorkflowEvent::default()
        }
    }

    #[test]
    fn tracks_become_latencies_and_rates() {
        let plan = plan(&["--shape", "chain", "--steps", "2"]).unwrap();
        let mut tracks = HashMap::new();
        // Workflow 1: submitted at 1000, first step assigned at 1010 and 1030, finished at 1050.
        // Workflow 2: submitted at 1100, assigned at 1130, finished at 2000.
        // Workflow 3: submitted at 1200, never assigned.
        for (id, events) in [
            (
                1,
                vec![
                    event(EventKind::WorkflowSubmitted, 1, 1000),
                    event(EventKind::StepAssigned, 1, 1010),
                    event(EventKind::StepFinished, 1, 1020),
                    event(EventKind::StepAssigned, 1, 1030),
                    event(EventKind::StepFinished, 1, 1040),
                    event(EventKind::WorkflowFinished, 1, 1050),
                ],
            ),
            (
                2,
                vec![
                    event(EventKind::WorkflowSubmitted, 2, 1100),
                    event(EventKind::StepAssigned, 2, 1130),
                    event(EventKind::StepFinished, 2, 1900),
                    event(EventKind::WorkflowFinished, 2, 2000),
                ],
            ),
            (3, vec![event(EventKind::WorkflowSubmitted, 3, 1200)]),
        ] {
            let track: &mut Track = tracks.entry(id).or_default();
            events.iter().for_each(|e| track.apply(e));
        }
        assert_eq!(tracks[&1].first_assigned_ms, Some(1010));
        let r = summarise(&tracks, &plan);
        assert_eq!(
            (
                r.workflows_succeeded,
                r.workflows_failed,
                r.workflows_unfinished
            ),
            (1 + 1, 0, 1)
        );
        assert_eq!(r.steps_completed, 3);
        assert_eq!(r.run_seconds, 1.0);
        assert_eq!(r.steps_completed_per_second, 3.0);
        assert_eq!(r.submit_to_start.count, 2);
        assert!((r.submit_to_start.max_ms - 30.0).abs() < 0.05, "{r:?}");
        assert_eq!(r.submit_to_end.count, 2);
        assert!((r.submit_to_end.max_ms - 900.0).abs() < 1.0, "{r:?}");
        assert!((r.submit_to_end.p50_ms - 50.0).abs() < 0.1, "{r:?}");
    }
}
