//! One run: start the cluster, the workload and the fault schedule (safety phase), heal
//! everything (liveness phase), collect the evidence, check it, print the summary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_client::proto as pb;
use baton_client::{Client, ClientError, Outcome as ClientOutcome, WatchUpdate, WorkflowWatch};
use baton_proto::status::EVENTS_FROM_METADATA;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::checker::{
    self, Evidence, FinalStep, FinalWorkflow, Gate as FinalGate, Outcome, ReplicaStatus, Request,
};
use crate::cluster::{Cluster, SLOTS_PER_AGENT};
use crate::history::{Event, History, KeylessRequest, Read, Watched};
use crate::inject::{self, AGENTS, FaultRecord, Heal};
use crate::schedule::{self, Broken, Fault};

const LIVENESS_PATIENCE: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// What one workflow of the workload looks like.
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    /// `b` fails its first attempt (after recording it), so retries happen.
    flaky: bool,
    /// A `wait` step between `a` and `d`, which the workload approves (or first rejects, then
    /// retries the workflow).
    gated: bool,
    /// `b` runs 5 s, longer than its 2 s lease: its agent must renew the lease meanwhile.
    long: bool,
    /// `d` must start within 8 s of being ready, or it fails (a schedule-to-start deadline).
    deadline: bool,
}

impl Shape {
    fn draw(rng: &mut ChaCha8Rng) -> Shape {
        Shape {
            flaky: rng.random_bool(0.3),
            gated: rng.random_bool(0.25),
            long: rng.random_bool(0.15),
            deadline: rng.random_bool(0.2),
        }
    }
}

/// Each step appends `start` and `end` lines to the journal (O_APPEND, one short write each,
/// so lines never interleave) and prints its token as its output. The DAG is a -> b, c -> d,
/// as `shape` varies it.
fn spec(n: u64, shape: Shape) -> pb::WorkflowSpec {
    let script = r#"line() { echo "$1 $BATON_WORKFLOW_ID $BATON_STEP $BATON_ATTEMPT $CHAOS_AGENT $(date +%s%3N)" >> "$CHAOS_JOURNAL"; }
line start; sleep "$2"; line end
if [ "$1" = 1 ] && [ "$BATON_ATTEMPT_NUMBER" = 1 ]; then exit 1; fi
echo "$BATON_ATTEMPT""#;
    let step = |name: &str, deps: &[&str], flaky: bool, seconds: &str| pb::StepSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
            command: vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "step".into(),
                if flaky { "1" } else { "0" }.into(),
                seconds.into(),
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
        step("a", &[], false, "0.3"),
        step(
            "b",
            &["a"],
            shape.flaky,
            if shape.long { "5" } else { "0.3" },
        ),
        // Short: every workflow's `c` queues for the one key, which must not become the
        // bottleneck of the run (the key is still pressed: the summary shows how far).
        step(KEYED_STEP, &["a"], false, "0.1"),
        step("d", &["b", "c"], false, "0.3"),
    ];
    // Step c of every workflow shares one concurrency key.
    steps[2].concurrency = Some(pb::Concurrency {
        key: "chaos-{{ input.key }}".into(),
        limit: KEY_LIMIT,
    });
    if shape.deadline {
        steps[3].schedule_to_start_timeout_ms = 8_000;
    }
    if shape.gated {
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

/// The label that carries a key-less submit's nonce: how the checker finds what it made.
pub const NONCE_LABEL: &str = "chaos-nonce";

const GATE: &str = "gate";
/// The step that holds a concurrency key shared by every workflow, and the key's limit.
const KEYED_STEP: &str = "c";
const KEY_LIMIT: u32 = 2;

/// The workload's schedule: a run of the usual four steps every [`SCHEDULE_EVERY_MS`], through
/// every fault of the safety phase, paused when it ends.
const SCHEDULE: &str = "chaos-every-2s";
const SCHEDULE_EVERY_MS: u64 = 2_000;

fn schedule_spec() -> pb::ScheduleSpec {
    let mut workflow = spec(0, Shape::default());
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

/// What the workload did besides keyed submits, for the checker.
#[derive(Default)]
pub struct Operations {
    pub approvals: BTreeMap<u64, String>,
    pub rejections: usize,
    pub retries: BTreeMap<u64, Vec<(String, u64)>>,
    pub pauses: usize,
    pub keyless: Vec<KeylessRequest>,
    /// When each acknowledged submit was answered, by workflow (the first answer).
    pub acks: BTreeMap<u64, u64>,
    /// Workflows whose cancel was acknowledged as cancelling them; cancels sent in all.
    pub cancels: BTreeSet<u64>,
    pub cancels_sent: usize,
    /// Batches sent, and acknowledged submits sent again with their key (a client's repeat).
    pub batches: usize,
    pub repeats: usize,
}

fn classify(result: &Result<pb::SubmitResponse, ClientError>) -> Outcome {
    match result {
        Ok(reply) => Outcome::Acked(reply.workflow_id),
        Err(error) => classify_error(error),
    }
}

fn classify_error(error: &ClientError) -> Outcome {
    match error.outcome() {
        ClientOutcome::NotApplied => Outcome::Failed,
        // Applied without an id in hand: as good as unknown, resubmitting finds the id.
        ClientOutcome::Applied | ClientOutcome::Unknown => Outcome::Unknown,
    }
}

/// Workflows acknowledged so far, with when: what the readers read.
pub type Acked = Arc<Mutex<Vec<(u64, u64)>>>;

/// Submits a workflow every ~300 ms until `stop`; keys whose outcome was not an ack are
/// re-submitted (same key) until acked, also after `stop`, until `drain` says give up. The
/// client is the latest `clients` holds (a new one after each membership change).
///
/// Besides, through the same faults, recorded in `operations`:
/// - about one tick in three also submits a one-step workflow with no idempotency key, at most
///   once (`Client::submit_at_most_once`), labelled with a nonce: never re-sent;
/// - about one tick in ten submits a batch of three keyed workflows (`SubmitBatch`); items
///   not acknowledged are re-submitted one by one, with their keys;
/// - about one tick in seven sends an acknowledged submit again with its key (a client's repeat),
///   which must answer the same workflow;
/// - workflows vary (`Shape`): a step longer than its lease, a schedule-to-start deadline;
/// - about one acked workflow in five is paused at once and resumed about a second later
///   (sooner once `stop` is set). A pause whose outcome is unknown may have applied, so it is
///   resumed all the same; a resume is repeated until it is acknowledged (resuming is
///   idempotent);
/// - about one acked workflow in ten without a gate is cancelled a second or so later;
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
    acked: Acked,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut pending: BTreeMap<String, pb::WorkflowSpec> = BTreeMap::new();
    // Acknowledged keyed submits, for a client's repeat.
    let mut done: Vec<(String, pb::WorkflowSpec)> = Vec::new();
    // Workflows paused (or maybe paused), and when to resume each.
    let mut paused: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut cancels: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut gates: BTreeMap<u64, Gate> = BTreeMap::new();
    let mut n = 0u64;
    let mut reported = Instant::now();
    let ack = |id: u64| {
        let at = now_ms();
        let mut operations = operations.lock().expect("not poisoned");
        if let std::collections::btree_map::Entry::Vacant(entry) = operations.acks.entry(id) {
            entry.insert(at);
            acked.lock().expect("not poisoned").push((id, at));
        }
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let deadline = *drain_deadline.lock().expect("not poisoned");
        let drained = pending.is_empty() && paused.is_empty() && gates.is_empty();
        if stopping && (drained || deadline.is_some_and(|d| Instant::now() > d)) {
            return;
        }
        if stopping && reported.elapsed() > Duration::from_secs(5) {
            reported = Instant::now();
            println!(
                "  draining: {} submits unacknowledged, {} workflows paused, {} gates to answer",
                pending.len(),
                paused.len(),
                gates.len()
            );
        }
        let client = clients.borrow().clone();
        let mut batch: Vec<(String, pb::WorkflowSpec)> = pending
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        if !stopping {
            n += 1;
            batch.push((format!("s{seed}-wf{n}"), spec(n, Shape::draw(&mut rng))));
            if !done.is_empty() && rng.random_bool(0.15) {
                batch.push(done[rng.random_range(0..done.len())].clone());
                operations.lock().expect("not poisoned").repeats += 1;
            }
            if rng.random_bool(0.35) {
                let nonce = format!("s{seed}-free{n}");
                // One step: what it tests is the submit.
                let mut free = spec(n, Shape::draw(&mut rng));
                free.steps.truncate(1);
                free.labels.insert(NONCE_LABEL.into(), nonce.clone());
                let outcome = match client.submit_at_most_once(free).await {
                    Ok(reply) => Outcome::Acked(reply.workflow_id),
                    Err(error) => classify_error(&error),
                };
                if let Outcome::Acked(id) = outcome {
                    ack(id);
                }
                operations
                    .lock()
                    .expect("not poisoned")
                    .keyless
                    .push(KeylessRequest { nonce, outcome });
            }
            if rng.random_bool(0.1) {
                let items: Vec<(String, pb::WorkflowSpec)> = (0..3)
                    .map(|i| {
                        (
                            format!("s{seed}-batch{n}-{i}"),
                            spec(n, Shape::draw(&mut rng)),
                        )
                    })
                    .collect();
                let sent = items
                    .iter()
                    .map(|(key, spec)| (spec.clone(), Some(key.clone())))
                    .collect();
                operations.lock().expect("not poisoned").batches += 1;
                let results = client.submit_batch(sent).await;
                for (i, (key, spec)) in items.into_iter().enumerate() {
                    let outcome = match &results {
                        Ok(results) => match results.get(i).and_then(|r| r.outcome.as_ref()) {
                            Some(pb::submit_batch_result::Outcome::Submitted(reply)) => {
                                Outcome::Acked(reply.workflow_id)
                            }
                            // Refused by the state machine (a quota, say): nothing made.
                            _ => Outcome::Failed,
                        },
                        Err(error) => classify_error(error),
                    };
                    match outcome {
                        Outcome::Acked(id) => {
                            ack(id);
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
                            done.push((key.clone(), spec));
                        }
                        _ => {
                            pending.insert(key.clone(), spec);
                        }
                    }
                    history
                        .lock()
                        .expect("not poisoned")
                        .push(Request { key, outcome });
                }
            }
        }
        for (key, spec) in batch {
            let result = client.submit(spec.clone(), Some(key.clone())).await;
            let outcome = classify(&result);
            if let Outcome::Acked(id) = outcome {
                ack(id);
                if pending.remove(&key).is_some() || !done.iter().any(|(k, _)| *k == key) {
                    done.push((key.clone(), spec.clone()));
                }
                let gated = spec.steps.iter().any(|s| s.name == GATE);
                if gated && !gates.contains_key(&id) {
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
                } else if !stopping && !gated && rng.random_bool(0.1) {
                    let at = Instant::now() + Duration::from_millis(rng.random_range(300..1_500));
                    cancels.insert(id, at);
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
        let due: Vec<u64> = cancels
            .iter()
            .filter(|(_, at)| Instant::now() >= **at)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            cancels.remove(&id);
            let result = client.cancel(id, "chaos cancel").await;
            let mut operations = operations.lock().expect("not poisoned");
            operations.cancels_sent += 1;
            if let Ok(reply) = result
                && reply.state == pb::WorkflowState::Cancelled as i32
            {
                operations.cancels.insert(id);
            }
        }
        let due: Vec<u64> = gates
            .iter()
            .filter(|(_, gate)| Instant::now() >= gate.next_check)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let gate = gates.get_mut(&id).expect("listed");
            gate.next_check = Instant::now() + Duration::from_millis(250);
            if answer_gate(&client, id, gate, stopping, &operations).await {
                gates.remove(&id);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Key-less submits besides the workload's, enough of them to be in flight when a fault
/// strikes: `lanes` loops, each submitting a one-step workflow (a `wait` step nobody answers,
/// which times out in half a second) at most once, then pausing `pause`, until `stop`. Lane `i`
/// stays with node `i` of `nodes` (round the list), so most lanes talk to a follower, which
/// forwards to the leader: a leader killed then leaves forwards whose outcome is unknown.
async fn keyless_load(
    nodes: Vec<Client>,
    seed: u64,
    (lanes, pause): (usize, Duration),
    stop: Arc<AtomicBool>,
    operations: Arc<Mutex<Operations>>,
    acked: Acked,
) {
    let mut loops = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (client, stop, operations, acked) = (
            nodes[lane % nodes.len()].clone(),
            stop.clone(),
            operations.clone(),
            acked.clone(),
        );
        loops.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let nonce = format!("s{seed}-light{lane}-{n}");
                let spec = pb::WorkflowSpec {
                    name: format!("chaos-light-{lane}-{n}"),
                    labels: [(NONCE_LABEL.to_owned(), nonce.clone())].into(),
                    steps: vec![pb::StepSpec {
                        name: "hold".into(),
                        task: Some(pb::step_spec::Task::Wait(pb::WaitTask {
                            signal: "never".into(),
                            timeout_ms: 500,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let outcome = match client.submit_at_most_once(spec).await {
                    Ok(reply) => Outcome::Acked(reply.workflow_id),
                    Err(error) => classify_error(&error),
                };
                {
                    let mut operations = operations.lock().expect("not poisoned");
                    if let Outcome::Acked(id) = outcome {
                        let at = now_ms();
                        operations.acks.insert(id, at);
                        acked.lock().expect("not poisoned").push((id, at));
                    }
                    operations.keyless.push(KeylessRequest { nonce, outcome });
                }
                tokio::time::sleep(pause).await;
            }
        });
    }
    while loops.join_next().await.is_some() {}
}

/// Reads acknowledged workflows, linearizably, on one node after another (each asked directly,
/// without a proxy, so a partitioned node is asked too) until `stop`: every ~50 ms, one of the
/// 50 latest acknowledged. Each read answered (found or NOT_FOUND) is recorded with when it was
/// sent and answered.
async fn reader(
    nodes: Vec<(u64, Client)>,
    seed: u64,
    acked: Acked,
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<Read>>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4ead);
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let id = {
            let acked = acked.lock().expect("not poisoned");
            if acked.is_empty() {
                continue;
            }
            let recent = acked.len().saturating_sub(50);
            acked[rng.random_range(recent..acked.len())].0
        };
        let (node, client) = &nodes[turn % nodes.len()];
        turn += 1;
        let start_ms = now_ms();
        let revision = match client.get(id, pb::ReadConsistency::Linearizable).await {
            Ok(workflow) => Some(workflow.revision),
            Err(error) if error.code() == Some(tonic::Code::NotFound) => None,
            Err(_) => continue,
        };
        reads.lock().expect("not poisoned").push(Read {
            workflow: id,
            node: *node,
            start_ms,
            end_ms: now_ms(),
            revision,
        });
    }
}

/// Watches every workflow from index 1 through every fault, as a client that resumes where it
/// was would (`WorkflowWatch`, through the proxies), until its task is aborted. A node that
/// says it no longer holds the events asked for is taken at its word: the range is recorded as
/// refused and the watch goes on from where that node can replay.
async fn watcher(client: Client, watched: Arc<Mutex<Watched>>) {
    let mut watch = WorkflowWatch::new(client.clone(), 0, 1);
    watched.lock().expect("not poisoned").from = 1;
    let name = watched.lock().expect("not poisoned").name.clone();
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => {
                watched
                    .lock()
                    .expect("not poisoned")
                    .events
                    .push(event_of(event));
            }
            Ok(Some(WatchUpdate::Resumed { .. })) => {
                watched.lock().expect("not poisoned").resumes += 1;
            }
            Ok(None) => return,
            Err(error) => {
                let from = error
                    .status()
                    .filter(|s| s.code() == tonic::Code::OutOfRange)
                    .and_then(|s| s.metadata().get(EVENTS_FROM_METADATA))
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if let Some(from) = from {
                    let asked = watch.next_index();
                    println!("  watch {name}: events [{asked}, {from}) no longer held: {error}");
                    watched
                        .lock()
                        .expect("not poisoned")
                        .refused
                        .push((asked, from));
                    watch = WorkflowWatch::new(client.clone(), 0, from);
                } else {
                    // Every node out of reach for now: the same watch tries again.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// A watch the run keeps: the node it stays with (none: it moves between nodes), what it saw,
/// its task.
type RunningWatch = (
    Option<u64>,
    Arc<Mutex<Watched>>,
    tokio::task::JoinHandle<()>,
);

/// How long the hopping watch stays on one node, and how long it takes to come back on the
/// next (a client reconnecting): events are committed meanwhile, which it must then be sent.
const HOP_EVERY: Duration = Duration::from_millis(1_500);
const HOP_PAUSE: Duration = Duration::from_millis(300);

/// Watches every workflow from index 1 as a client behind a load balancer that cuts long
/// streams would: every [`HOP_EVERY`] it drops its stream and, [`HOP_PAUSE`] later, resumes on
/// the next node (each reached through its proxy) from the last index it saw, skipping the
/// events of that index it already has, exactly as `WorkflowWatch` resumes. A node's refusal to
/// replay is recorded as `watcher` records it. Runs until its task is aborted.
async fn hopping_watcher(nodes: Vec<Client>, watched: Arc<Mutex<Watched>>) {
    watched.lock().expect("not poisoned").from = 1;
    // The last index seen, and how many of its events.
    let mut last: Option<(u64, usize)> = None;
    for turn in 0.. {
        let client = &nodes[turn % nodes.len()];
        let from = last.map_or(1, |(index, _)| index);
        let mut skip = last.map_or(0, |(_, seen)| seen);
        match client.watch(0, from).await {
            Ok(mut stream) => {
                let until = tokio::time::Instant::now() + HOP_EVERY;
                while let Ok(Ok(Some(event))) =
                    tokio::time::timeout_at(until, stream.message()).await
                {
                    if event.index == from && skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    skip = 0;
                    last = match last {
                        Some((index, seen)) if index == event.index => Some((index, seen + 1)),
                        _ => Some((event.index, 1)),
                    };
                    watched
                        .lock()
                        .expect("not poisoned")
                        .events
                        .push(event_of(event));
                }
                watched.lock().expect("not poisoned").resumes += 1;
            }
            Err(error) => {
                let whole_from = error
                    .status()
                    .filter(|s| s.code() == tonic::Code::OutOfRange)
                    .and_then(|s| s.metadata().get(EVENTS_FROM_METADATA))
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if let Some(whole_from) = whole_from {
                    watched
                        .lock()
                        .expect("not poisoned")
                        .refused
                        .push((from, whole_from));
                    last = Some((whole_from, 0));
                }
            }
        }
        tokio::time::sleep(HOP_PAUSE).await;
    }
}

/// Moves gated workflow `id` one step on, as its state asks: approves or rejects a waiting
/// gate, retries a workflow that ended without its gate open. Returns whether nothing is left
/// to do for it. Errors (faults) are left for the next check.
async fn answer_gate(
    client: &Client,
    id: u64,
    gate: &mut Gate,
    stopping: bool,
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
        // Once the faults are over, gates are only approved: the run winds down.
        let reject = gate.reject_first && !gate.retried && !stopping;
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
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(READS_IN_FLIGHT) {
        let mut reads = tokio::task::JoinSet::new();
        for &id in chunk {
            let client = client.clone();
            reads.spawn(async move { client.get(id, pb::ReadConsistency::Linearizable).await });
        }
        while let Some(read) = reads.join_next().await {
            out.push(read??);
        }
    }
    out.sort_by_key(|w| w.id);
    Ok(out)
}

/// A workflow event as the checker keeps it.
fn event_of(event: pb::WorkflowEvent) -> Event {
    Event {
        index: event.index,
        workflow: event.workflow_id,
        kind: event.kind,
        step: event.step,
        attempt_id: event.attempt_id,
        time_ms: event.time_ms,
        workflow_state: event.workflow_state,
    }
}

/// Reads the harness sends at once when it gathers the evidence.
const READS_IN_FLIGHT: usize = 16;

/// Whether the cluster lists no running workflow (a cheap question asked before reading every
/// workflow; the answer that counts is those reads').
async fn none_running(client: &Client) -> bool {
    let page = client
        .list(pb::ListRequest {
            states: vec![pb::WorkflowState::Running as i32],
            page_size: 1,
            ..Default::default()
        })
        .await;
    matches!(page, Ok(page) if page.workflows.is_empty())
}

/// A few workflows still running, with what each step waits for: what a slow liveness phase
/// is waiting on.
async fn print_running(client: &Client) {
    let Ok(page) = client
        .list(pb::ListRequest {
            states: vec![pb::WorkflowState::Running as i32],
            page_size: 5,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    for listed in page.workflows {
        let Ok(workflow) = client.get(listed.id, pb::ReadConsistency::Stale).await else {
            continue;
        };
        let steps: Vec<String> = workflow
            .steps
            .iter()
            .filter(|s| s.state != pb::StepState::Succeeded as i32)
            .map(|s| {
                let state = pb::StepState::try_from(s.state)
                    .map_or_else(|_| s.state.to_string(), |s| s.as_str_name().to_owned());
                if s.pending_reason.is_empty() {
                    format!("{} {state}", s.name)
                } else {
                    format!("{} {state} ({})", s.name, s.pending_reason)
                }
            })
            .collect();
        println!(
            "  still running: workflow {} {}{}: {}",
            workflow.id,
            workflow.name,
            if workflow.paused { " (paused)" } else { "" },
            steps.join(", ")
        );
    }
}

/// Every workflow's history, read `READS_IN_FLIGHT` at a time, each tried up to three times;
/// and the workflows whose history could not be read.
async fn histories(
    client: &Client,
    workflows: &[pb::Workflow],
) -> (BTreeMap<u64, Vec<Event>>, BTreeSet<u64>) {
    let mut out = BTreeMap::new();
    let mut unread = BTreeSet::new();
    for chunk in workflows.chunks(READS_IN_FLIGHT) {
        let mut reads = tokio::task::JoinSet::new();
        for workflow in chunk {
            let (client, id) = (client.clone(), workflow.id);
            reads.spawn(async move {
                let mut read = client.history(id, pb::ReadConsistency::Linearizable).await;
                for _ in 0..2 {
                    if read.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    read = client.history(id, pb::ReadConsistency::Linearizable).await;
                }
                (id, read)
            });
        }
        while let Some(joined) = reads.join_next().await {
            let Ok((id, read)) = joined else {
                continue;
            };
            match read {
                Ok(events) => {
                    let events = events.into_iter().map(event_of).collect();
                    out.insert(id, events);
                }
                Err(error) => {
                    println!("  no history of workflow {id}: {error}");
                    unread.insert(id);
                }
            }
        }
    }
    // A task that panicked read nothing either.
    for workflow in workflows {
        if !out.contains_key(&workflow.id) {
            unread.insert(workflow.id);
        }
    }
    (out, unread)
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
        nonce: workflow.labels.get(NONCE_LABEL).cloned(),
        finished: is_finished(workflow.state),
        cancelled: workflow.state == pb::WorkflowState::Cancelled as i32,
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
    schedule::print(&plan);
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
    let began = Instant::now();
    let first_leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    cluster.prepare_agents(Duration::from_secs(30)).await?;
    for agent in AGENTS {
        cluster.start_agent(agent).await?;
    }
    println!(
        "cluster up in {} ({} ms), first leader node {first_leader}",
        dir.path().display(),
        began.elapsed().as_millis()
    );

    // ---- safety phase: workload under faults.
    let history = Arc::new(Mutex::new(Vec::new()));
    let operations = Arc::new(Mutex::new(Operations::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let drain_deadline = Arc::new(Mutex::new(None));
    let (workload_client, clients) = watch::channel(cluster.workload_client()?);
    // One watch that fails over between nodes, one staying with each node (through its
    // restarts, partitions and snapshot installs), and one hopping between them.
    let mut watches = vec![(None, "failover".to_owned(), cluster.workload_client()?)];
    for &id in cluster.nodes.keys() {
        watches.push((Some(id), format!("node {id}"), cluster.proxied_client(id)?));
    }
    let mut watches: Vec<RunningWatch> = watches
        .into_iter()
        .map(|(node, name, client)| {
            let watched = Arc::new(Mutex::new(Watched {
                name,
                ..Watched::default()
            }));
            let task = tokio::spawn(watcher(client, watched.clone()));
            (node, watched, task)
        })
        .collect();
    // And one that hops from node to node.
    let hopping = Arc::new(Mutex::new(Watched {
        name: "hopping".into(),
        ..Watched::default()
    }));
    let nodes: Vec<Client> = cluster
        .nodes
        .keys()
        .map(|&id| cluster.proxied_client(id))
        .collect::<anyhow::Result<_>>()?;
    let task = tokio::spawn(hopping_watcher(nodes, hopping.clone()));
    watches.push((None, hopping, task));
    steer_schedule(&workload_client.borrow().clone(), false).await?;
    let acked: Acked = Arc::default();
    let workload = tokio::spawn(workload(
        clients,
        seed,
        stop.clone(),
        drain_deadline.clone(),
        history.clone(),
        operations.clone(),
        acked.clone(),
    ));
    let light = tokio::spawn(keyless_load(
        cluster
            .nodes
            .keys()
            .map(|&id| cluster.proxied_client(id))
            .collect::<anyhow::Result<_>>()?,
        seed,
        targeted.map_or(schedule::KEYLESS_LOAD, Broken::keyless_load),
        stop.clone(),
        operations.clone(),
        acked.clone(),
    ));
    let reads = Arc::new(Mutex::new(Vec::new()));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reading = tokio::spawn(reader(
        cluster.pinned_clients()?,
        seed,
        acked,
        stop_reading.clone(),
        reads.clone(),
    ));
    let start = Instant::now();
    let run_start_ms = now_ms();
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut zombie_windows = Vec::new();
    // Each fault is two events, its install and its heal (a heal first at a tie); a fault
    // installed while another holds overlaps it.
    let mut events: Vec<(u64, bool, usize)> = plan
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [(p.at_ms, true, i), (p.at_ms + p.hold_ms, false, i)])
        .collect();
    events.sort_by_key(|&(at_ms, install, i)| (at_ms, install, i));
    let mut holding: BTreeMap<usize, (usize, Heal)> = BTreeMap::new();
    for (at_ms, install, i) in events {
        tokio::time::sleep(Duration::from_millis(at_ms).saturating_sub(start.elapsed())).await;
        if install {
            let (record, heal) = inject::install(
                &mut cluster,
                &plan[i],
                !holding.is_empty(),
                now_ms(),
                &workload_client,
            )
            .await;
            println!(
                "  +{:>6} ms fault {:?} on {}: installed {}{}",
                record.at_ms.saturating_sub(run_start_ms),
                record.fault,
                record.target,
                record.installed,
                if record.overlapped {
                    " (while another holds)"
                } else {
                    ""
                }
            );
            holding.insert(i, (records.len(), heal));
            records.push(record);
        } else if let Some((r, heal)) = holding.remove(&i) {
            let others: Vec<&Heal> = holding.values().map(|(_, h)| h).collect();
            inject::heal(
                &mut cluster,
                heal,
                &others,
                &mut records[r],
                now_ms(),
                &mut zombie_windows,
            )
            .await;
        }
    }
    for record in &mut records {
        record.settle().await;
    }
    tokio::time::sleep(duration.saturating_sub(start.elapsed())).await;

    // ---- liveness phase: everything healed; unknown outcomes resubmitted until acked.
    let safety_ms = start.elapsed().as_millis();
    println!("--- liveness phase");
    let healing = Instant::now();
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
    println!(
        "  healed, schedule paused in {} ms",
        healing.elapsed().as_millis()
    );
    let liveness_deadline = Instant::now() + LIVENESS_PATIENCE;
    *drain_deadline.lock().expect("not poisoned") = Some(liveness_deadline);
    stop.store(true, Ordering::Relaxed);
    workload.await?;
    light.await?;
    stop_reading.store(true, Ordering::Relaxed);
    reading.await?;
    let drained_ms = healing.elapsed().as_millis();
    let reader = cluster.direct_client(None)?;
    let recovery = Instant::now();
    let mut reported = Instant::now();
    let workflows = loop {
        if reported.elapsed() > Duration::from_secs(5) {
            reported = Instant::now();
            print_running(&reader).await;
        }
        let late = Instant::now() > liveness_deadline;
        if late || none_running(&reader).await {
            let all = collect(&reader).await;
            if let Ok(all) = &all
                && all.iter().all(|w| is_finished(w.state))
            {
                break all.clone();
            }
            if late {
                break all.unwrap_or_default();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovery_ms = recovery.elapsed().as_millis();
    let gathering = Instant::now();
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
    // Every workflow's history, then the watch given until it has reached the last of them.
    let (histories, unread) = histories(&reader, &workflows).await;
    let last_index = histories
        .values()
        .flat_map(|h: &Vec<Event>| h.last())
        .map(|e| e.index)
        .max()
        .unwrap_or(0);
    // The watches of nodes still members (and the one that fails over) are given until they
    // reach that index.
    let histories_ms = gathering.elapsed().as_millis();
    let watch_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch_deadline
        && watches.iter().any(|(node, watched, _)| {
            node.is_none_or(|id| cluster.nodes.contains_key(&id))
                && watched
                    .lock()
                    .expect("not poisoned")
                    .events
                    .last()
                    .is_none_or(|e| e.index < last_index)
        })
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "evidence: replicas agreed and {} histories read in {histories_ms} ms, watches caught up \
         in {} ms more",
        histories.len(),
        gathering.elapsed().as_millis() - histories_ms
    );
    let watched: Vec<Watched> = watches
        .into_iter()
        .map(|(_, watched, task)| {
            task.abort();
            std::mem::take(&mut *watched.lock().expect("not poisoned"))
        })
        .collect();
    let reads = std::mem::take(&mut *reads.lock().expect("not poisoned"));
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
        history: History {
            keyless: operations.keyless,
            acks: operations.acks,
            reads,
            cancels: operations.cancels,
            histories,
            unread,
            watched,
        },
    };
    let verdict = checker::check(&evidence);
    summary(
        seed,
        &records,
        &evidence,
        &verdict,
        recovery_ms,
        &Counts {
            pauses: operations.pauses,
            rejections: operations.rejections,
            cancels_sent: operations.cancels_sent,
            batches: operations.batches,
            repeats: operations.repeats,
        },
    );
    let violated: Vec<&'static str> = verdict
        .invariants
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, _)| *name)
        .collect();
    let stopping = Instant::now();
    drop(cluster);
    println!(
        "run took {:.1} s: safety {:.1} s, the workload drained in {:.1} s, every workflow ended \
         {:.1} s later, evidence {:.1} s, stop {:.1} s",
        began.elapsed().as_secs_f64(),
        safety_ms as f64 / 1000.0,
        drained_ms as f64 / 1000.0,
        recovery_ms as f64 / 1000.0,
        gathering
            .elapsed()
            .saturating_sub(stopping.elapsed())
            .as_secs_f64(),
        stopping.elapsed().as_secs_f64()
    );
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

/// What the workload did, counted for the summary.
struct Counts {
    pauses: usize,
    rejections: usize,
    cancels_sent: usize,
    batches: usize,
    repeats: usize,
}

fn summary(
    seed: u64,
    records: &[FaultRecord],
    evidence: &Evidence,
    verdict: &checker::Verdict,
    recovery_ms: u128,
    counts: &Counts,
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
        .filter(|r| r.installed && r.failover_ms.is_none() && !r.failover_unmeasured)
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
        "operators: {} pauses, {} approvals sent ({gates_opened} gates opened), {} rejections, \
         {} retries",
        counts.pauses,
        evidence.approvals.len(),
        counts.rejections,
        evidence.retries.len()
    );
    let history = &evidence.history;
    let keyless =
        |f: fn(&Outcome) -> bool| history.keyless.iter().filter(|r| f(&r.outcome)).count();
    println!(
        "key-less submits: {} (acked {}, refused {}, unknown {}); {} batches of 3; {} repeats of \
         acked submits; {} cancels sent ({} acknowledged as cancelling)",
        history.keyless.len(),
        keyless(|o| matches!(o, Outcome::Acked(_))),
        keyless(|o| matches!(o, Outcome::Failed)),
        keyless(|o| matches!(o, Outcome::Unknown)),
        counts.batches,
        counts.repeats,
        counts.cancels_sent,
        history.cancels.len()
    );
    let nodes_read: BTreeSet<u64> = history.reads.iter().map(|r| r.node).collect();
    println!(
        "reads: {} linearizable on nodes {nodes_read:?} ({} answered not found)",
        history.reads.len(),
        history
            .reads
            .iter()
            .filter(|r| r.revision.is_none())
            .count()
    );
    let events = |kind: i32| {
        history
            .histories
            .values()
            .flatten()
            .filter(|e| e.kind == kind)
            .count()
    };
    for watched in &history.watched {
        println!(
            "watch {}: {} events, resumed {} times, {} ranges refused as no longer held",
            watched.name,
            watched.events.len(),
            watched.resumes,
            watched.refused.len()
        );
    }
    println!(
        "histories: {} events, {} assignments, {} lease expiries",
        history.histories.values().map(Vec::len).sum::<usize>(),
        events(crate::history::kind::STEP_ASSIGNED),
        events(crate::history::kind::STEP_LEASE_EXPIRED)
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
