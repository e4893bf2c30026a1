//! One run: start the cluster, the workload and the fault schedule (safety phase), heal
//! everything (liveness phase), collect the evidence, check it, print the summary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_client::proto as pb;
use baton_client::{Client, ClientError, Outcome as ClientOutcome};
use baton_powerloss::Tear;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::checker::{
    self, Evidence, FinalStep, FinalWorkflow, Gate as FinalGate, Outcome, ReplicaStatus, Request,
};
use crate::cluster::{Cluster, SLOTS_PER_AGENT};
use crate::proxy::Mode;
use crate::schedule::{self, Broken, Fault, Planned};

const AGENTS: [&str; 3] = ["agent-1", "agent-2", "agent-3"];
const LIVENESS_PATIENCE: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A fault as it happened.
#[derive(Debug)]
struct FaultRecord {
    at_ms: u64,
    fault: Fault,
    target: String,
    installed: bool,
    /// For faults on the leader: ms until another leader was seen.
    failover_ms: Option<u64>,
}

/// Each step appends `start` and `end` lines to the journal (O_APPEND, one short write each,
/// so lines never interleave) and prints its token as its output. A flaky step fails its first
/// attempt (after recording it) so retries happen. A gated workflow has a `wait` step between
/// `a` and `d`, which the workload approves (or first rejects, then retries the workflow).
fn spec(n: u64, flaky: bool, gated: bool) -> pb::WorkflowSpec {
    let script = r#"line() { echo "$1 $BATON_WORKFLOW_ID $BATON_STEP $BATON_ATTEMPT $CHAOS_AGENT $(date +%s%3N)" >> "$CHAOS_JOURNAL"; }
line start; sleep 0.3; line end
if [ "$1" = 1 ] && [ "$BATON_ATTEMPT_NUMBER" = 1 ]; then exit 1; fi
echo "$BATON_ATTEMPT""#;
    let step = |name: &str, deps: &[&str], flaky: bool| pb::StepSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
            command: vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "step".into(),
                if flaky { "1" } else { "0" }.into(),
            ],
            ..Default::default()
        })),
        retry: Some(pb::RetryPolicy {
            max_attempts: 4,
            backoff: Some(pb::Backoff {
                initial_ms: 200,
                multiplier: 2.0,
                max_ms: 1_000,
            }),
        }),
        lease_ttl_ms: 2_000,
        timeout_ms: 10_000,
        ..Default::default()
    };
    let mut steps = vec![
        step("a", &[], false),
        step("b", &["a"], flaky),
        step(KEYED_STEP, &["a"], false),
        step("d", &["b", "c"], false),
    ];
    // Step c of every workflow shares one concurrency key.
    steps[2].concurrency = Some(pb::Concurrency {
        key: "chaos-{{ input.key }}".into(),
        limit: KEY_LIMIT,
    });
    if gated {
        steps.push(pb::StepSpec {
            name: GATE.into(),
            depends_on: vec!["a".into()],
            // Long enough for the faults, short enough that an unanswered gate still ends
            // within the liveness phase.
            task: Some(pb::step_spec::Task::Wait(pb::WaitTask {
                signal: "chaos-approval".into(),
                timeout_ms: 20_000,
            })),
            ..Default::default()
        });
        steps[3].depends_on.push(GATE.into());
    }
    pb::WorkflowSpec {
        name: format!("chaos-{n}"),
        steps,
        input: [("key".to_owned(), KEYED_STEP.to_owned())].into(),
        ..Default::default()
    }
}

const GATE: &str = "gate";
/// The step that holds a concurrency key shared by every workflow, and the key's limit.
const KEYED_STEP: &str = "c";
const KEY_LIMIT: u32 = 2;

/// The workload's schedule: a run of the usual four steps every [`SCHEDULE_EVERY_MS`], through
/// every fault of the safety phase, paused when it ends.
const SCHEDULE: &str = "chaos-every-2s";
const SCHEDULE_EVERY_MS: u64 = 2_000;

fn schedule_spec() -> pb::ScheduleSpec {
    let mut workflow = spec(0, false, false);
    workflow.name = "chaos-scheduled".into();
    pb::ScheduleSpec {
        name: SCHEDULE.into(),
        workflow: Some(workflow),
        every_ms: SCHEDULE_EVERY_MS,
        // Runs overlap freely: every time must get its run, and the checker sees each.
        overlap: pb::OverlapPolicy::Allow as i32,
        ..Default::default()
    }
}

/// Creates (or `paused`: pauses) the workload's schedule, retrying through faults; an outcome
/// left unknown is retried too (a create repeated is ALREADY_EXISTS, a pause is idempotent).
/// A pause that finds no schedule is done: a build that lost the acknowledged schedule is the
/// checker's to judge (its runs no longer match its count), not the harness's.
async fn steer_schedule(client: &Client, paused: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = if paused {
            match client.pause_schedule(SCHEDULE, true).await {
                Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(()),
                other => other.map(|_| ()),
            }
        } else {
            match client.create_schedule(schedule_spec(), false).await {
                Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => Ok(()),
                other => other.map(|_| ()),
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                anyhow::bail!("schedule {SCHEDULE} (paused: {paused}): {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The data of the approval for workflow `id`: unique to it, and never a rejection's.
fn approval(id: u64) -> String {
    format!("{{\"approved\":{id}}}")
}

/// A gated workflow the workload still answers.
struct Gate {
    /// Reject the first time the gate waits, then retry the workflow and approve.
    reject_first: bool,
    /// A retry was sent (its outcome known or not): from now on the gate is approved, and the
    /// workflow is not retried again.
    retried: bool,
    next_check: Instant,
}

/// What the workload did besides submitting, for the checker.
#[derive(Default)]
pub struct Operations {
    pub approvals: BTreeMap<u64, String>,
    pub rejections: usize,
    pub retries: BTreeMap<u64, Vec<(String, u64)>>,
    pub pauses: usize,
}

fn classify(result: &Result<pb::SubmitResponse, ClientError>) -> Outcome {
    match result {
        Ok(reply) => Outcome::Acked(reply.workflow_id),
        Err(error) => match error.outcome() {
            ClientOutcome::NotApplied => Outcome::Failed,
            // Applied without an id in hand: as good as unknown, resubmitting finds the id.
            ClientOutcome::Applied | ClientOutcome::Unknown => Outcome::Unknown,
        },
    }
}

/// Submits a workflow every ~300 ms until `stop`; keys whose outcome was not an ack are
/// re-submitted (same key) until acked, also after `stop`, until `drain` says give up. The
/// client is the latest `clients` holds (a new one after each membership change).
///
/// An operator's hand too, through the same faults, recorded in `operations`:
/// - about one acked workflow in five is paused at once and resumed about a second later
///   (sooner once `stop` is set). A pause whose outcome is unknown may have applied, so it is
///   resumed all the same; a resume is repeated until it is acknowledged (resuming is
///   idempotent);
/// - about one workflow in four has a gate (a `wait` step), approved once it waits; half of
///   them are rejected first, which fails the workflow, then retried (from the failed steps)
///   and approved. A gate whose workflow ended without it opening is retried once too.
///
/// The checker's invariants must hold regardless, and every workflow must still end.
async fn workload(
    clients: watch::Receiver<Client>,
    seed: u64,
    stop: Arc<AtomicBool>,
    drain_deadline: Arc<Mutex<Option<Instant>>>,
    history: Arc<Mutex<Vec<Request>>>,
    operations: Arc<Mutex<Operations>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut pending: BTreeMap<String, pb::WorkflowSpec> = BTreeMap::new();
    // Workflows paused (or maybe paused), and when to resume each.
    let mut paused: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut gates: BTreeMap<u64, Gate> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let deadline = *drain_deadline.lock().expect("not poisoned");
        let drained = pending.is_empty() && paused.is_empty() && gates.is_empty();
        if stopping && (drained || deadline.is_some_and(|d| Instant::now() > d)) {
            return;
        }
        let mut batch: Vec<(String, pb::WorkflowSpec)> = pending
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        if !stopping {
            n += 1;
            let spec = spec(n, rng.random_bool(0.3), rng.random_bool(0.25));
            batch.push((format!("s{seed}-wf{n}"), spec));
        }
        let client = clients.borrow().clone();
        for (key, spec) in batch {
            let result = client.submit(spec.clone(), Some(key.clone())).await;
            let outcome = classify(&result);
            if let Outcome::Acked(id) = outcome {
                pending.remove(&key);
                if spec.steps.iter().any(|s| s.name == GATE) {
                    gates.insert(
                        id,
                        Gate {
                            reject_first: rng.random_bool(0.5),
                            retried: false,
                            next_check: Instant::now(),
                        },
                    );
                }
                if !stopping && rng.random_bool(0.2) {
                    match client.pause(id, true).await {
                        Err(error) if error.outcome() == ClientOutcome::NotApplied => {}
                        _ => {
                            paused.insert(id, Instant::now() + Duration::from_secs(1));
                            operations.lock().expect("not poisoned").pauses += 1;
                        }
                    }
                }
            } else {
                pending.insert(key.clone(), spec);
            }
            history
                .lock()
                .expect("not poisoned")
                .push(Request { key, outcome });
        }
        let due: Vec<u64> = paused
            .iter()
            .filter(|(_, at)| stopping || Instant::now() >= **at)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            // Resumed, or finished meanwhile (its running steps ended while it was paused):
            // either way nothing of it waits any more.
            let done = match client.pause(id, false).await {
                Ok(_) => true,
                Err(error) => error.code() == Some(tonic::Code::FailedPrecondition),
            };
            if done {
                paused.remove(&id);
            }
        }
        let due: Vec<u64> = gates
            .iter()
            .filter(|(_, gate)| Instant::now() >= gate.next_check)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let gate = gates.get_mut(&id).expect("listed");
            gate.next_check = Instant::now() + Duration::from_millis(500);
            if answer_gate(&client, id, gate, &operations).await {
                gates.remove(&id);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Moves gated workflow `id` one step on, as its state asks: approves or rejects a waiting
/// gate, retries a workflow that ended without its gate open. Returns whether nothing is left
/// to do for it. Errors (faults) are left for the next check.
async fn answer_gate(
    client: &Client,
    id: u64,
    gate: &mut Gate,
    operations: &Mutex<Operations>,
) -> bool {
    let Ok(workflow) = client.get(id, pb::ReadConsistency::Linearizable).await else {
        return false;
    };
    let Some(step) = workflow.steps.iter().find(|s| s.name == GATE) else {
        return true;
    };
    if step.state == pb::StepState::Succeeded as i32 {
        return true;
    }
    if step.state == pb::StepState::AwaitingSignal as i32 {
        let reject = gate.reject_first && !gate.retried;
        let data = if reject {
            "not yet".to_owned()
        } else {
            approval(id)
        };
        if !reject {
            // Recorded before it is sent: an unknown outcome may have applied.
            operations
                .lock()
                .expect("not poisoned")
                .approvals
                .insert(id, data.clone());
        }
        let sent = client.signal(id, GATE, data, reject).await;
        if reject && sent.is_ok() {
            operations.lock().expect("not poisoned").rejections += 1;
        }
        return false;
    }
    if !is_finished(workflow.state) {
        return false; // not waiting yet, or failed while the rest of the workflow runs
    }
    if gate.retried {
        return true; // retried once already; it may end without its gate open
    }
    let kept: Vec<(String, u64)> = workflow
        .steps
        .iter()
        .filter(|s| s.state == pb::StepState::Succeeded as i32)
        .map(|s| (s.name.clone(), s.attempt_id))
        .collect();
    match client.retry(id, "").await {
        Err(error) if error.outcome() == ClientOutcome::NotApplied => false,
        _ => {
            gate.retried = true;
            operations
                .lock()
                .expect("not poisoned")
                .retries
                .insert(id, kept);
            false
        }
    }
}

/// Waits until a leader other than `old` is seen (asked directly, not through the proxies).
async fn failover_ms(cluster: &Cluster, old: u64, since: Instant) -> Option<u64> {
    while since.elapsed() < Duration::from_secs(15) {
        if cluster.leader_other_than(Some(old)).await.is_some() {
            return Some(since.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Installs one fault, holds it, heals it. Agent pauses are returned as zombie windows.
async fn apply_fault(
    cluster: &mut Cluster,
    planned: &Planned,
    zombie_windows: &mut Vec<(String, u64, u64)>,
    workload_client: &watch::Sender<Client>,
) -> FaultRecord {
    let at_ms = now_ms();
    let leader = cluster.leader().await;
    let followers: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| Some(*id) != leader)
        .collect();
    let follower = followers[(planned.pick % followers.len() as u64) as usize];
    let agent = AGENTS[(planned.pick % AGENTS.len() as u64) as usize].to_string();
    let hold = Duration::from_millis(planned.hold_ms);
    let mut record = FaultRecord {
        at_ms,
        fault: planned.fault,
        target: String::new(),
        installed: false,
        failover_ms: None,
    };
    let since = Instant::now();
    match planned.fault {
        Fault::KillLeader | Fault::PauseLeader | Fault::IsolateLeader => {
            let Some(leader) = leader else {
                record.target = "no leader known".into();
                return record;
            };
            record.target = format!("node {leader}");
            let node = cluster.nodes.get_mut(&leader).expect("known node");
            match planned.fault {
                Fault::KillLeader => node.kill(),
                Fault::PauseLeader => node.pause(),
                _ => cluster.set_node_links(leader, Mode::Blackhole),
            }
            record.installed = true;
            record.failover_ms = failover_ms(cluster, leader, since).await;
            tokio::time::sleep(hold.saturating_sub(since.elapsed())).await;
            match planned.fault {
                Fault::KillLeader => {
                    if let Err(error) = cluster.start_node(leader) {
                        record.target += &format!(" (restart failed: {error})");
                    }
                }
                Fault::PauseLeader => cluster.nodes.get_mut(&leader).expect("known").resume(),
                _ => cluster.set_node_links(leader, Mode::Pass),
            }
        }
        Fault::KillFollower => {
            record.target = format!("node {follower}");
            cluster.nodes.get_mut(&follower).expect("known").kill();
            record.installed = true;
            tokio::time::sleep(hold).await;
            if let Err(error) = cluster.start_node(follower) {
                record.target += &format!(" (restart failed: {error})");
            }
        }
        Fault::IsolateFollower => {
            record.target = format!("node {follower}");
            cluster.set_node_links(follower, Mode::Blackhole);
            record.installed = true;
            tokio::time::sleep(hold).await;
            cluster.set_node_links(follower, Mode::Pass);
        }
        Fault::OneWayDrop => {
            let links = cluster.member_links();
            let link = links[(planned.pick % links.len() as u64) as usize];
            record.target = format!("link {} -> {}", link.0, link.1);
            cluster.links[&link].set(Mode::Drop);
            record.installed = true;
            tokio::time::sleep(hold).await;
            cluster.links[&link].set(Mode::Pass);
        }
        Fault::DelayAll => {
            let ms = 20 + planned.pick % 180;
            record.target = format!("all node links +{ms} ms per chunk");
            for proxy in cluster.links.values() {
                proxy.set(Mode::Delay(ms));
            }
            record.installed = true;
            tokio::time::sleep(hold).await;
            cluster.heal_network();
        }
        Fault::KillAgent | Fault::PauseAgent => {
            record.target = agent.clone();
            let proc = cluster.agents.get_mut(&agent).expect("known agent");
            if planned.fault == Fault::KillAgent {
                proc.kill();
            } else {
                proc.pause();
            }
            record.installed = true;
            tokio::time::sleep(hold).await;
            if planned.fault == Fault::KillAgent {
                if let Err(error) = cluster.start_agent(&agent).await {
                    record.target += &format!(" (restart failed: {error})");
                }
            } else {
                cluster.agents.get_mut(&agent).expect("known").resume();
                zombie_windows.push((agent, at_ms, now_ms()));
            }
        }
        Fault::IsolateAgent => {
            record.target = agent.clone();
            cluster.set_agent_links(&agent, Mode::Blackhole, false);
            record.installed = true;
            tokio::time::sleep(hold).await;
            cluster.set_agent_links(&agent, Mode::Pass, false);
        }
        Fault::DelayAgent => {
            // Past the 2 s lease and the leader's 1 s margin: assignments arrive at once, but
            // heartbeats and reports only after the lease lapsed.
            let ms = 3_500 + planned.pick % 1_000;
            record.target = format!("{agent} uplink +{ms} ms per chunk");
            cluster.set_agent_links(&agent, Mode::Delay(ms), true);
            record.installed = true;
            tokio::time::sleep(hold).await;
            cluster.set_agent_links(&agent, Mode::Pass, false);
        }
        Fault::ReplaceNode => {
            // Any member, the leader included: removing the leader makes it step down.
            let members: Vec<u64> = cluster.nodes.keys().copied().collect();
            let victim = members[(planned.pick % members.len() as u64) as usize];
            let role = if Some(victim) == leader {
                "leader"
            } else {
                "follower"
            };
            match cluster.replace_node(victim).await {
                Ok(Some(new)) => {
                    record.target = format!("{role} node {victim} replaced by node {new}");
                    record.installed = true;
                }
                Ok(None) => record.target = "no spare node left".into(),
                Err(error) => record.target = format!("{role} node {victim}: {error:#}"),
            }
            match cluster.workload_client() {
                Ok(client) => {
                    workload_client.send_replace(client);
                }
                Err(error) => record.target += &format!(" (no new workload client: {error:#})"),
            }
            tokio::time::sleep(hold.saturating_sub(since.elapsed())).await;
        }
        Fault::KillAll => {
            record.target = "every node".into();
            let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
            for node in cluster.nodes.values_mut() {
                node.kill();
            }
            record.installed = true;
            tokio::time::sleep(hold).await;
            restart_all(cluster, &ids, &mut record).await;
        }
        Fault::PowerLossNode => {
            let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
            let id = ids[(planned.pick % ids.len() as u64) as usize];
            let role = if Some(id) == leader {
                "leader"
            } else {
                "follower"
            };
            record.target = format!("{role} node {id}");
            match cluster.power_cut(id, tear_of(planned, id)) {
                Ok(report) => {
                    record.target += &format!(" ({report})");
                    record.installed = true;
                }
                Err(error) => record.target += &format!(" (cut failed: {error:#})"),
            }
            tokio::time::sleep(hold).await;
            if let Err(error) = cluster.start_node(id) {
                record.target += &format!(" (restart failed: {error})");
            }
        }
        Fault::PowerLossAll => {
            record.target = "every node".into();
            let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
            // Every process dies before any folder is rewound: one power cut, not a sequence.
            for node in cluster.nodes.values_mut() {
                node.kill();
            }
            record.installed = true;
            for &id in &ids {
                match cluster.power_cut(id, tear_of(planned, id)) {
                    Ok(report) => record.target += &format!("; node {id}: {report}"),
                    Err(error) => {
                        record.installed = false;
                        record.target += &format!("; node {id}: cut failed: {error:#}");
                    }
                }
            }
            tokio::time::sleep(hold).await;
            restart_all(cluster, &ids, &mut record).await;
        }
        Fault::SnapshotCatchUp => {
            let Some(leader) = leader else {
                record.target = "no leader known".into();
                return record;
            };
            record.target = format!("node {follower} behind a snapshot of node {leader}");
            cluster.set_node_links(follower, Mode::Blackhole);
            tokio::time::sleep(hold / 2).await;
            // The leader snapshots and purges its log behind it (20 entries kept), so the cut
            // follower can only catch up by receiving the snapshot.
            let snapshot = match cluster.direct_client(Some(leader)) {
                Ok(client) => client.trigger_snapshot().await.is_ok(),
                Err(_) => false,
            };
            record.installed = snapshot;
            tokio::time::sleep(hold / 2).await;
            cluster.set_node_links(follower, Mode::Pass);
        }
    }
    record
}

/// Starts the nodes `ids` again after every one was stopped, and records in `record` how long
/// the cluster took to have a leader.
async fn restart_all(cluster: &mut Cluster, ids: &[u64], record: &mut FaultRecord) {
    for &id in ids {
        if let Err(error) = cluster.start_node(id) {
            record.target += &format!(" (node {id} restart failed: {error})");
        }
    }
    let restarted = Instant::now();
    match cluster.wait_for_leader(Duration::from_secs(15)).await {
        Ok(leader) => {
            record.target += &format!(
                " (node {leader} leads {} ms after the restart)",
                restarted.elapsed().as_millis()
            );
        }
        Err(_) => record.target += " (no leader within 15 s of the restart)",
    }
}

/// How a planned power cut treats node `node`'s lost writes: torn ones seeded by the pick and
/// the node, so a seed replays the same tears.
fn tear_of(planned: &Planned, node: u64) -> Tear {
    if planned.torn() {
        Tear::Seeded(planned.pick ^ node.rotate_left(32))
    } else {
        Tear::None
    }
}

async fn replica_statuses(cluster: &Cluster) -> Vec<ReplicaStatus> {
    let mut out = Vec::new();
    for &id in cluster.nodes.keys() {
        if let Ok(client) = cluster.direct_client(Some(id))
            && let Ok(status) = client.cluster_status().await
        {
            out.push(ReplicaStatus {
                node_id: id,
                applied_index: status.applied_index,
                state_hash: status.state_hash,
            });
        }
    }
    out
}

/// Every workflow the cluster holds, with its steps.
async fn collect(client: &Client) -> anyhow::Result<Vec<pb::Workflow>> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?;
        ids.extend(page.workflows.iter().map(|w| w.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(client.get(id, pb::ReadConsistency::Linearizable).await?);
    }
    Ok(out)
}

fn is_finished(state: i32) -> bool {
    state != pb::WorkflowState::Running as i32 && state != pb::WorkflowState::Unspecified as i32
}

fn final_workflow(workflow: &pb::Workflow) -> FinalWorkflow {
    let deps: BTreeMap<&str, Vec<String>> = workflow
        .spec
        .as_ref()
        .map(|s| {
            s.steps
                .iter()
                .map(|st| (st.name.as_str(), st.depends_on.clone()))
                .collect()
        })
        .unwrap_or_default();
    let gates: BTreeSet<&str> = workflow
        .spec
        .iter()
        .flat_map(|s| &s.steps)
        .filter(|s| matches!(s.task, Some(pb::step_spec::Task::Wait(_))))
        .map(|s| s.name.as_str())
        .collect();
    FinalWorkflow {
        id: workflow.id,
        key: workflow.idempotency_key.clone(),
        finished: is_finished(workflow.state),
        steps: workflow
            .steps
            .iter()
            .map(|step| FinalStep {
                name: step.name.clone(),
                depends_on: deps.get(step.name.as_str()).cloned().unwrap_or_default(),
                succeeded: step.state == pb::StepState::Succeeded as i32,
                attempt_id: step.attempt_id,
                output_token: step
                    .output
                    .split_whitespace()
                    .last()
                    .and_then(|t| t.parse().ok()),
                gate: gates.contains(step.name.as_str()).then(|| FinalGate {
                    output: step.output.clone(),
                    finished_ms: step.finished_at_ms,
                }),
            })
            .collect(),
    }
}

/// What one run is.
pub struct RunOptions {
    pub seed: u64,
    pub duration: Duration,
    pub nodes: u64,
    pub secure: bool,
    pub keep: bool,
    /// The kinds of fault the seed's schedule draws from.
    pub faults: Vec<Fault>,
    /// The faults that expose this broken behaviour, instead of the seed's schedule.
    pub targeted: Option<Broken>,
    /// And the nodes run with it (`batond` built with `fault-injection`); without it the same
    /// schedule is the control run, which a correct build must pass.
    pub inject: bool,
}

/// Runs one schedule; returns the invariants violated (empty: the run passed).
pub async fn run(options: &RunOptions) -> anyhow::Result<Vec<&'static str>> {
    let RunOptions {
        seed,
        duration,
        nodes,
        secure,
        keep,
        targeted,
        inject,
        ..
    } = *options;
    let broken = targeted.filter(|_| inject);
    let plan = match targeted {
        None => schedule::plan(seed, duration.as_millis() as u64, &options.faults),
        Some(broken) => broken.plan(duration.as_millis() as u64),
    };
    println!("schedule ({} faults):", plan.len());
    for planned in &plan {
        println!(
            "  +{:>6} ms  {:?} for {} ms (pick {})",
            planned.at_ms, planned.fault, planned.hold_ms, planned.pick
        );
    }
    let dir = tempfile::Builder::new().prefix("baton-chaos-").tempdir()?;
    let bin = crate::cluster::bin_dir()?;
    let mut cluster = Cluster::start(
        &bin,
        dir.path(),
        nodes,
        secure,
        broken.map(Broken::env_value),
    )
    .await?;
    let first_leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    cluster.prepare_agents(Duration::from_secs(30)).await?;
    for agent in AGENTS {
        cluster.start_agent(agent).await?;
    }
    println!(
        "cluster up in {}, first leader node {first_leader}",
        dir.path().display()
    );

    // ---- safety phase: workload under faults.
    let history = Arc::new(Mutex::new(Vec::new()));
    let operations = Arc::new(Mutex::new(Operations::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let drain_deadline = Arc::new(Mutex::new(None));
    let (workload_client, clients) = watch::channel(cluster.workload_client()?);
    steer_schedule(&workload_client.borrow().clone(), false).await?;
    let workload = tokio::spawn(workload(
        clients,
        seed,
        stop.clone(),
        drain_deadline.clone(),
        history.clone(),
        operations.clone(),
    ));
    let start = Instant::now();
    let run_start_ms = now_ms();
    let mut records = Vec::new();
    let mut zombie_windows = Vec::new();
    for planned in &plan {
        tokio::time::sleep(Duration::from_millis(planned.at_ms).saturating_sub(start.elapsed()))
            .await;
        let record =
            apply_fault(&mut cluster, planned, &mut zombie_windows, &workload_client).await;
        println!(
            "  +{:>6} ms fault {:?} on {}: installed {} failover {:?}",
            record.at_ms.saturating_sub(run_start_ms),
            record.fault,
            record.target,
            record.installed,
            record.failover_ms
        );
        records.push(record);
    }
    tokio::time::sleep(duration.saturating_sub(start.elapsed())).await;

    // ---- liveness phase: everything healed; unknown outcomes resubmitted until acked.
    println!("--- liveness phase");
    cluster.heal_network();
    let down: Vec<u64> = cluster
        .nodes
        .iter()
        .filter(|(_, p)| !p.alive())
        .map(|(id, _)| *id)
        .collect();
    for id in down {
        cluster.start_node(id)?;
    }
    for proc in cluster
        .nodes
        .values_mut()
        .chain(cluster.agents.values_mut())
    {
        if proc.is_paused() {
            proc.resume();
        }
    }
    // No new schedule run once the faults end: what it started must end like the rest. A
    // cluster that cannot pause it in 30 s keeps starting runs: the liveness check says so.
    if let Err(error) = steer_schedule(&cluster.direct_client(None)?, true).await {
        println!("  schedule not paused: {error:#}");
    }
    let liveness_deadline = Instant::now() + LIVENESS_PATIENCE;
    *drain_deadline.lock().expect("not poisoned") = Some(liveness_deadline);
    stop.store(true, Ordering::Relaxed);
    workload.await?;
    let reader = cluster.direct_client(None)?;
    let recovery = Instant::now();
    let workflows = loop {
        let all = collect(&reader).await;
        if let Ok(all) = &all
            && all.iter().all(|w| is_finished(w.state))
        {
            break all.clone();
        }
        if Instant::now() > liveness_deadline {
            break all.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovery_ms = recovery.elapsed().as_millis();
    let converge_deadline = Instant::now() + Duration::from_secs(30);
    let replicas = loop {
        let statuses = replica_statuses(&cluster).await;
        let agree = statuses.len() == cluster.nodes.len()
            && statuses.windows(2).all(|w| {
                (w[0].applied_index, &w[0].state_hash) == (w[1].applied_index, &w[1].state_hash)
            });
        if agree || Instant::now() > converge_deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let journal_text = std::fs::read_to_string(&cluster.journal).unwrap_or_default();
    let journal = checker::parse_journal(&journal_text).map_err(anyhow::Error::msg)?;
    let requests = history.lock().expect("not poisoned").clone();
    let operations = std::mem::take(&mut *operations.lock().expect("not poisoned"));
    // A schedule the cluster lost reads as one that started nothing (the checker then finds
    // its runs unaccounted for); one it cannot report at all, likewise.
    let mut schedule = pb::Schedule::default();
    for _ in 0..50 {
        match reader
            .get_schedule(SCHEDULE, pb::ReadConsistency::Linearizable)
            .await
        {
            Ok(got) => {
                schedule = got.schedule.unwrap_or_default();
                break;
            }
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                println!("  schedule {SCHEDULE} is gone from the cluster");
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let schedules = BTreeMap::from([(
        SCHEDULE.to_owned(),
        checker::ScheduleFacts {
            every_ms: SCHEDULE_EVERY_MS,
            missed: schedule.runs_missed,
            started: schedule.runs_started,
        },
    )]);
    let schedule_runs = workflows
        .iter()
        .filter(|w| !w.schedule.is_empty())
        .map(|w| (w.schedule.clone(), w.nominal_time_ms, w.id))
        .collect();
    let evidence = Evidence {
        requests,
        journal,
        workflows: workflows.iter().map(final_workflow).collect(),
        replicas,
        replicas_expected: cluster.nodes.len(),
        slots_per_agent: SLOTS_PER_AGENT,
        zombie_windows,
        approvals: operations.approvals,
        retries: operations.retries,
        schedules,
        schedule_runs,
        key_limits: BTreeMap::from([(KEYED_STEP.to_owned(), KEY_LIMIT as usize)]),
    };
    let verdict = checker::check(&evidence);
    summary(
        seed,
        &records,
        &evidence,
        &verdict,
        recovery_ms,
        (operations.pauses, operations.rejections),
    );
    let violated: Vec<&'static str> = verdict
        .invariants
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, _)| *name)
        .collect();
    drop(cluster);
    // A broken build is expected to fail: its folder is kept only when it was not caught.
    let as_expected = match broken {
        Some(broken) => violated.iter().any(|v| broken.caught_by().contains(v)),
        None => violated.is_empty(),
    };
    if !as_expected || keep {
        let kept = dir.keep();
        println!("logs and journal kept in {}", kept.display());
    }
    Ok(violated)
}

fn summary(
    seed: u64,
    records: &[FaultRecord],
    evidence: &Evidence,
    verdict: &checker::Verdict,
    recovery_ms: u128,
    (pauses, rejections): (usize, usize),
) {
    println!("--- summary, seed {seed}");
    let mut by_fault: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for record in records {
        let entry = by_fault.entry(format!("{:?}", record.fault)).or_default();
        entry.0 += 1;
        entry.1 += usize::from(record.installed);
    }
    println!("{:<20} {:>8} {:>10}", "fault", "planned", "installed");
    for (fault, (planned, installed)) in &by_fault {
        println!("{fault:<20} {planned:>8} {installed:>10}");
    }
    let failovers: Vec<u64> = records.iter().filter_map(|r| r.failover_ms).collect();
    let missed = records
        .iter()
        .filter(|r| r.installed && r.failover_ms.is_none())
        .filter(|r| {
            matches!(
                r.fault,
                Fault::KillLeader | Fault::PauseLeader | Fault::IsolateLeader
            )
        })
        .count();
    if failovers.is_empty() {
        println!("failover: none measured ({missed} without a new leader in 15 s)");
    } else {
        let mut sorted = failovers.clone();
        sorted.sort_unstable();
        println!(
            "failover ms: n={} min={} median={} max={} ({missed} without a new leader in 15 s)",
            sorted.len(),
            sorted[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1]
        );
    }
    let count =
        |f: fn(&Outcome) -> bool| evidence.requests.iter().filter(|r| f(&r.outcome)).count();
    println!(
        "requests: {} (acked {}, failed {}, unknown {}); workflows {}; keys acked {}",
        evidence.requests.len(),
        count(|o| matches!(o, Outcome::Acked(_))),
        count(|o| matches!(o, Outcome::Failed)),
        count(|o| matches!(o, Outcome::Unknown)),
        evidence.workflows.len(),
        evidence
            .requests
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Acked(_)))
            .map(|r| &r.key)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let gates_opened = evidence
        .workflows
        .iter()
        .flat_map(|w| &w.steps)
        .filter(|s| s.gate.is_some() && s.succeeded)
        .count();
    println!(
        "operators: {pauses} pauses, {} approvals sent ({gates_opened} gates opened), \
         {rejections} rejections, {} retries",
        evidence.approvals.len(),
        evidence.retries.len()
    );
    for (name, facts) in &evidence.schedules {
        println!(
            "schedule {name}: {} runs started, {} times missed",
            facts.started, facts.missed
        );
    }
    println!(
        "executions: {} ({} re-executions, {} overlaps with a fenced attempt, {} with a paused \
         agent's zombie); liveness reached in {recovery_ms} ms",
        evidence.journal.len(),
        verdict.re_executions,
        verdict.fenced_overlaps,
        verdict.zombie_overlaps
    );
    for (step, peak) in &verdict.key_peaks {
        let limit = evidence.key_limits.get(step).copied().unwrap_or_default();
        println!("concurrency key of step {step}: limit {limit}, at most {peak} ran at once");
    }
    if let Some(r) = evidence.replicas.first() {
        println!(
            "replicas: {} at applied index {} hash {}",
            evidence.replicas.len(),
            r.applied_index,
            &r.state_hash[..r.state_hash.len().min(16)]
        );
    }
    println!("{:<45} {:>10}", "invariant", "violations");
    for (name, n) in &verdict.invariants {
        println!("{name:<45} {n:>10}");
    }
    for violation in verdict.violations.iter().take(20) {
        println!("VIOLATION {violation}");
    }
}
