//! Wall-clock steps on real `batond` processes (libfaketime, one clock per process): the leader's
//! clock stepped an hour forward and back, a leader change while it is an hour ahead, the fast
//! node made leader again, and a leader whose own clock is an hour behind. State time (what the
//! leader stamps, see `raft::clock`) follows real time through all of it: every stamp lies
//! between when the test asked and when it saw the answer, no schedule-to-start deadline fires
//! before it is due in state time, and no backoff ends before its policy says.
//!
//! The test reads real time from its own clock (it runs without libfaketime) and never bounds
//! how long anything takes: a stamp later than the moment the test observed it, or earlier than
//! the moment it asked, is a clock that leaked into state time, however slow the machine is.
//!
//! Needs Debian's `faketime` package (scripts/prereqs.sh installs it). libfaketime reads each
//! node's offset from its own file (`FAKETIME_TIMESTAMP_FILE`, e.g. `+3600`) on every call
//! (`FAKETIME_NO_CACHE=1`), and leaves CLOCK_MONOTONIC alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`),
//! as a real NTP step or `date -s` would.

use crate::common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_proto::raft::v1 as raft_pb;
use baton_proto::raft::v1::raft_service_client::RaftServiceClient;
use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{
    Ports, Proc, endpoints_flag, loopbacks, reserve_ports, spawn_agent, spawn_node_env,
};
use common::*;

const HOUR_S: i64 = 3_600;
/// How far a stamp may stray from the test's real clock: the leader reads the voters' clocks
/// over loopback with half the round trip added, so its error is a fraction of a round trip.
const STAMP_SLACK_MS: u64 = 1_000;
/// How close a node's wall clock (Hello) or the leader's offset metric must come to the offset
/// written for it: the offsets are hours, the reads take milliseconds.
const OFFSET_SLACK_MS: i64 = 60_000;
/// Ample for anything here on a loaded machine; a wait that runs out is a stalled clock.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);
/// The workflows that wait for a deadline: no agent has the label their step asks for.
const NOWHERE: (&str, &str) = ("pool", "nowhere");
/// How long the cluster idles before a leader change in the last phase: longer than the slack,
/// so that losing it from state time shows.
const IDLE_SPELL: Duration = Duration::from_secs(3);
/// The retrying step's agent.
const RETRY_POOL: (&str, &str) = ("pool", "retry");

fn real_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Debian's libfaketime for this machine's architecture.
fn libfaketime() -> PathBuf {
    let path = PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketime.so.1",
        std::env::consts::ARCH
    ));
    assert!(
        path.is_file(),
        "{} not found: install Debian's `faketime` package (scripts/prereqs.sh does)",
        path.display()
    );
    path
}

/// Three `batond` processes, each under libfaketime with its own offset file, and their ports.
struct Cluster {
    dir: tempfile::TempDir,
    ports: Ports,
    addrs: Vec<SocketAddr>,
    metrics: Vec<String>,
    /// Reserves the metrics ports as long as the cluster lives.
    _metrics_ports: Ports,
    nodes: BTreeMap<usize, Proc>,
    http: reqwest::Client,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = reserve_ports(3);
        let metrics_ports = reserve_ports(3);
        let metrics = metrics_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut cluster = Self {
            addrs: loopbacks(&ports),
            dir,
            ports,
            metrics,
            _metrics_ports: metrics_ports,
            nodes: BTreeMap::new(),
            http: {
                // reqwest is built without a default crypto provider; plain HTTP still asks.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap()
            },
        };
        for id in 1..=3 {
            cluster.set_clock(id, 0);
            cluster.spawn(id);
        }
        cluster
    }

    fn addr(&self, id: usize) -> SocketAddr {
        self.addrs[id - 1]
    }

    fn clock_file(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}.faketime"))
    }

    /// (Re)starts node `id` on its ports and data, its clock read from its offset file.
    fn spawn(&mut self, id: usize) {
        let lib = libfaketime();
        let file = self.clock_file(id);
        let env: [(&str, &OsStr); 4] = [
            ("LD_PRELOAD", lib.as_os_str()),
            ("FAKETIME_TIMESTAMP_FILE", file.as_os_str()),
            ("FAKETIME_NO_CACHE", OsStr::new("1")),
            ("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1")),
        ];
        let metrics = self.metrics[id - 1].clone();
        let node = spawn_node_env(
            id,
            &self.ports,
            self.dir.path(),
            &["--metrics-listen", &metrics],
            &env,
        );
        self.nodes.insert(id, node);
    }

    /// SIGKILL node `id` (its data stays).
    fn kill(&mut self, id: usize) {
        let node = self.nodes.remove(&id).expect("node is running");
        stop_faked(node);
    }

    /// Steps node `id`'s wall clock to real time + `offset_s`. The file is replaced whole
    /// (rename), so libfaketime never reads half of it.
    fn set_clock(&self, id: usize, offset_s: i64) {
        let file = self.clock_file(id);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}\n")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    }

    /// Sets node `id`'s clock and waits until the process itself reads it (its `Hello` answer
    /// carries its wall clock): proof that libfaketime really moves that process's clock.
    async fn step_clock(&self, id: usize, offset_s: i64) {
        self.set_clock(id, offset_s);
        let addr = self.addr(id);
        let offset_ms = wait_for(
            PHASE_TIMEOUT,
            &format!("node {id}'s wall clock to read real time {offset_s:+} s"),
            || async move {
                let before = real_now_ms() as i64;
                let answer = RaftServiceClient::new(channel(addr))
                    .hello(raft_pb::HelloRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                let offset_ms = answer.wall_time_ms as i64 - before;
                ((offset_ms - offset_s * 1_000).abs() < OFFSET_SLACK_MS).then_some(offset_ms)
            },
        )
        .await;
        tracing::info!(node = id, offset_ms, "node's wall clock stepped");
    }

    /// Waits until node `id` leads and reports `baton_clock_offset_seconds` (its wall clock
    /// minus what it stamps) near `offset_s`: what an operator sees on a leader whose clock
    /// stepped while state time did not.
    async fn wait_offset_metric(&self, id: usize, offset_s: i64) -> f64 {
        let url = format!("http://{}/metrics", self.metrics[id - 1]);
        wait_for(
            PHASE_TIMEOUT,
            &format!("node {id}'s baton_clock_offset_seconds near {offset_s}"),
            || {
                let (http, url) = (self.http.clone(), url.clone());
                async move {
                    let text = http.get(&url).send().await.ok()?.text().await.ok()?;
                    let value: f64 = text
                        .lines()
                        .find_map(|l| l.strip_prefix("baton_clock_offset_seconds "))?
                        .trim()
                        .parse()
                        .ok()?;
                    let off_ms = (value * 1_000.0) as i64 - offset_s * 1_000;
                    (off_ms.abs() < OFFSET_SLACK_MS).then_some(value)
                }
            },
        )
        .await
    }

    async fn status(&self, id: usize) -> Option<pb::ClusterStatusResponse> {
        status(self.addr(id)).await
    }

    /// The leader every running node agrees on, once they have all applied the same index.
    async fn leader(&self) -> usize {
        wait_for(
            PHASE_TIMEOUT,
            "a leader the running nodes agree on, all caught up",
            || async {
                let mut statuses = Vec::new();
                for &id in self.nodes.keys() {
                    statuses.push(self.status(id).await?);
                }
                let first = &statuses[0];
                let agreed = first.leader_id != 0
                    && self.nodes.contains_key(&(first.leader_id as usize))
                    && statuses.iter().all(|s| {
                        s.leader_id == first.leader_id && s.applied_index == first.applied_index
                    });
                agreed.then_some(first.leader_id as usize)
            },
        )
        .await
    }

    /// Makes node `to` the leader (AdminService.TransferLeader, asked again while it has not
    /// happened: a transfer to a voter still catching up is declined).
    async fn transfer_leader(&self, to: usize) {
        wait_for(PHASE_TIMEOUT, &format!("node {to} to lead"), || async {
            if self.leader().await == to {
                return Some(());
            }
            let from = *self.nodes.keys().find(|id| **id != to).unwrap();
            let mut admin = AdminServiceClient::new(channel(self.addr(from)));
            let _ = admin
                .transfer_leader(pb::TransferLeaderRequest {
                    to_node_id: to as u64,
                })
                .await;
            None
        })
        .await;
        tracing::info!(leader = to, "leadership transferred");
    }

    /// Submits `spec` through whichever node answers (same key on every try), and returns the
    /// real times around it.
    async fn submit(&self, spec: pb::WorkflowSpec) -> Submitted {
        let key = spec.name.clone();
        let before_ms = real_now_ms();
        let id = wait_for(PHASE_TIMEOUT, "an acknowledged submit", || async {
            for &node in self.nodes.keys() {
                let mut client = WorkflowServiceClient::new(channel(self.addr(node)));
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(spec.clone()),
                    idempotency_key: key.clone(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                };
                if let Ok(reply) = client.submit(request).await {
                    return Some(reply.into_inner().workflow_id);
                }
            }
            None
        })
        .await;
        let submitted = Submitted {
            id,
            name: key,
            before_ms,
            after_ms: real_now_ms(),
        };
        let (workflow, _) = self.get(&submitted).await;
        assert_stamped_in_real_time(&workflow, &submitted, submitted.after_ms);
        submitted
    }

    /// The workflow as a running node answers it (a linearizable read), and the real time
    /// right after the answer.
    async fn get(&self, submitted: &Submitted) -> (pb::Workflow, u64) {
        wait_for(PHASE_TIMEOUT, "a workflow read", || self.try_get(submitted)).await
    }

    async fn try_get(&self, submitted: &Submitted) -> Option<(pb::Workflow, u64)> {
        for &node in self.nodes.keys() {
            let mut client = WorkflowServiceClient::new(channel(self.addr(node)));
            let request = pb::GetRequest {
                workflow_id: submitted.id,
                consistency: 0,
                attempts_of_step: String::new(),
            };
            if let Ok(reply) = client.get(request).await {
                return Some((reply.into_inner().workflow?, real_now_ms()));
            }
        }
        None
    }

    /// Waits until the workflow has finished; returns it and the real time it was seen so.
    async fn finished(&self, submitted: &Submitted) -> (pb::Workflow, u64) {
        wait_for(
            PHASE_TIMEOUT,
            &format!("workflow {} to finish", submitted.name),
            || async {
                let (workflow, seen_ms) = self.try_get(submitted).await?;
                (workflow.state != pb::WorkflowState::Running as i32).then_some((workflow, seen_ms))
            },
        )
        .await
    }

    /// Waits until a deadline workflow has failed, and checks it failed on its deadline, not
    /// before it in state time, with every stamp in real time.
    async fn failed_on_deadline(&self, submitted: &Submitted, timeout_ms: u64) -> pb::Workflow {
        let (workflow, seen_ms) = self.finished(submitted).await;
        assert_failed_on_deadline(&workflow, submitted, timeout_ms, seen_ms);
        workflow
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            stop_faked(node);
        }
    }
}

/// SIGKILLs a process run under libfaketime and removes the semaphore and shared memory
/// libfaketime made for it in /dev/shm (named by pid): a process killed cannot remove them,
/// and a later process given the same pid could then fail to start.
fn stop_faked(mut node: Proc) {
    let pid = node.pid();
    node.kill();
    for name in [
        format!("faketime_shm_{pid}"),
        format!("sem.faketime_sem_{pid}"),
    ] {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
    }
}

/// A workflow the test submitted, and the real times around its submit.
struct Submitted {
    id: u64,
    name: String,
    before_ms: u64,
    after_ms: u64,
}

/// One step that no agent can take, failing when not started within `timeout_ms`.
fn waiting_spec(name: &str, timeout_ms: u64) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: name.into(),
        steps: vec![pb::StepSpec {
            name: "wait".into(),
            task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
                command: vec!["true".into()],
                ..Default::default()
            })),
            constraints: [(NOWHERE.0.into(), NOWHERE.1.into())].into(),
            schedule_to_start_timeout_ms: timeout_ms,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One step that always fails, retried with backoff on the retry pool's agent.
fn retrying_spec(name: &str) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: name.into(),
        steps: vec![pb::StepSpec {
            name: "flaky".into(),
            task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
                command: vec!["sh".into(), "-c".into(), "exit 1".into()],
                ..Default::default()
            })),
            constraints: [(RETRY_POOL.0.into(), RETRY_POOL.1.into())].into(),
            retry: Some(pb::RetryPolicy {
                max_attempts: 3,
                backoff: Some(pb::Backoff {
                    initial_ms: 1_000,
                    multiplier: 2.0,
                    max_ms: 0,
                }),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every stamp of `workflow` is real time: created no earlier than the test sent the submit
/// and no later than its acknowledgement; nothing after the test saw it (`seen_ms`).
fn assert_stamped_in_real_time(workflow: &pb::Workflow, submitted: &Submitted, seen_ms: u64) {
    let name = &submitted.name;
    let created = workflow.created_at_ms;
    assert!(
        created + STAMP_SLACK_MS >= submitted.before_ms,
        "{name}: created at {created}, {} ms before the submit was sent: state time lags real \
         time",
        submitted.before_ms - created
    );
    assert!(
        created <= submitted.after_ms + STAMP_SLACK_MS,
        "{name}: created at {created}, {} ms after the submit was acknowledged: state time runs \
         ahead of real time",
        created - submitted.after_ms
    );
    let mut stamps = vec![("finished", workflow.finished_at_ms)];
    for step in &workflow.steps {
        stamps.extend([
            ("step ready", step.ready_at_ms),
            ("step started", step.started_at_ms),
            ("step finished", step.finished_at_ms),
        ]);
    }
    for (what, at) in stamps.into_iter().filter(|(_, at)| *at != 0) {
        assert!(
            at <= seen_ms + STAMP_SLACK_MS,
            "{name}: {what} at {at}, {} ms after the test saw it: state time runs ahead of real \
             time",
            at - seen_ms
        );
    }
}

/// `workflow` failed on its step's schedule-to-start deadline, at least `timeout_ms` after the
/// step became ready in state time, and its stamps are real time.
fn assert_failed_on_deadline(
    workflow: &pb::Workflow,
    submitted: &Submitted,
    timeout_ms: u64,
    seen_ms: u64,
) {
    let name = &submitted.name;
    let step = &workflow.steps[0];
    assert_eq!(
        (workflow.state, step.state),
        (
            pb::WorkflowState::Failed as i32,
            pb::StepState::Failed as i32
        ),
        "{name}: {workflow:?}"
    );
    assert!(
        step.error.contains("schedule-to-start"),
        "{name}: failed for another reason: {}",
        step.error
    );
    let waited_ms = step.finished_at_ms - step.ready_at_ms;
    tracing::info!(
        workflow = %name, timeout_ms, waited_ms,
        "failed on its schedule-to-start deadline (state time)"
    );
    assert!(
        waited_ms >= timeout_ms,
        "{name}: failed {waited_ms} ms after it became ready, before its {timeout_ms} ms deadline"
    );
    assert_stamped_in_real_time(workflow, submitted, seen_ms);
}

/// A deadline workflow seen at `seen_ms`: still waiting, or failed on its deadline (never early).
fn assert_waiting_or_due(
    workflow: &pb::Workflow,
    submitted: &Submitted,
    timeout_ms: u64,
    seen_ms: u64,
) {
    if workflow.state == pb::WorkflowState::Running as i32 {
        assert_eq!(
            workflow.steps[0].state,
            pb::StepState::Ready as i32,
            "{}: {workflow:?}",
            submitted.name
        );
        assert_stamped_in_real_time(workflow, submitted, seen_ms);
    } else {
        assert_failed_on_deadline(workflow, submitted, timeout_ms, seen_ms);
    }
}

/// The workflow's events, from a Watch from the start, up to its end.
async fn events(addr: SocketAddr, workflow_id: u64) -> Vec<pb::WorkflowEvent> {
    let mut stream = WorkflowServiceClient::new(channel(addr))
        .watch(pb::WatchRequest {
            all_namespaces: Default::default(),
            namespace: Default::default(),
            workflow_id,
            from_index: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(PHASE_TIMEOUT, stream.message())
            .await
            .expect("the workflow's events")
            .expect("watch stream")
            .expect("events up to the workflow's end");
        let end = event.kind == pb::EventKind::WorkflowFinished as i32;
        events.push(event);
        if end {
            return events;
        }
    }
}

/// The retrying step ran all its attempts, and each retry became ready no earlier than its
/// backoff after the failure before it, in state time. Returns the backoffs measured.
fn assert_backoffs(events: &[pb::WorkflowEvent], spec: &pb::StepSpec) -> Vec<u64> {
    let kind = |k: pb::EventKind| k as i32;
    let assigned = events
        .iter()
        .filter(|e| e.kind == kind(pb::EventKind::StepAssigned))
        .count();
    assert_eq!(assigned, 3, "every attempt ran: {events:?}");
    let mut measured = Vec::new();
    let mut failed_at = None;
    for event in events {
        if event.kind == kind(pb::EventKind::StepRetrying) {
            failed_at = Some(event.time_ms);
        } else if event.kind == kind(pb::EventKind::StepReady)
            && let Some(failed_ms) = failed_at.take()
        {
            let configured_ms =
                baton_proto::validate::backoff_delay_ms(spec, measured.len() as u32 + 1);
            let backoff_ms = event.time_ms - failed_ms;
            tracing::info!(
                retry = measured.len() + 1,
                configured_ms,
                backoff_ms,
                "backoff in state time"
            );
            assert!(
                backoff_ms >= configured_ms,
                "retry {} ready {backoff_ms} ms after the failure, before its {configured_ms} ms \
                 backoff",
                measured.len() + 1
            );
            measured.push(backoff_ms);
        }
    }
    assert_eq!(measured.len(), 2, "two retries: {events:?}");
    measured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_time_follows_real_time_when_one_wall_clock_steps() {
    init_logs();
    let mut cluster = Cluster::start();
    let agent = spawn_agent(
        "retry-agent",
        &endpoints_flag(&cluster.ports),
        cluster.dir.path(),
        &[],
        &["--labels", "pool=retry", "--slots", "1"],
    );
    let leader = cluster.leader().await;
    tracing::info!(leader, "--- leader elected; W0 waits for its 20 s deadline");
    const W0_TIMEOUT_MS: u64 = 20_000;
    let w0 = cluster.submit(waiting_spec("w0", W0_TIMEOUT_MS)).await;

    tracing::info!("--- the leader's wall clock steps an hour forward");
    cluster.step_clock(leader, HOUR_S).await;
    let offset = cluster.wait_offset_metric(leader, HOUR_S).await;
    tracing::info!(offset, "leader's baton_clock_offset_seconds");
    let w1 = cluster.submit(waiting_spec("w1", 2_000)).await;
    cluster.failed_on_deadline(&w1, 2_000).await;
    // With the leader's raw wall clock as state time, W0 failed at the step.
    let (workflow, seen_ms) = cluster.get(&w0).await;
    if seen_ms + 2 * STAMP_SLACK_MS < w0.before_ms + W0_TIMEOUT_MS {
        // Its deadline cannot have come yet in a state time that keeps to real time.
        assert_eq!(
            workflow.steps[0].state,
            pb::StepState::Ready as i32,
            "W0 is still waiting when W1 failed: {workflow:?}"
        );
    }
    assert_waiting_or_due(&workflow, &w0, W0_TIMEOUT_MS, seen_ms);

    tracing::info!("--- the leader's wall clock steps two hours back (an hour behind real time)");
    cluster.step_clock(leader, -HOUR_S).await;
    cluster.wait_offset_metric(leader, -HOUR_S).await;
    // With the leader's raw wall clock, state time stalled here for two hours.
    let w2 = cluster.submit(waiting_spec("w2", 2_000)).await;
    let retried_spec = retrying_spec("retried");
    let retried = cluster.submit(retried_spec.clone()).await;
    cluster.failed_on_deadline(&w2, 2_000).await;
    let (workflow, seen_ms) = cluster.finished(&retried).await;
    assert_eq!(
        workflow.state,
        pb::WorkflowState::Failed as i32,
        "{workflow:?}"
    );
    assert_eq!(workflow.steps[0].attempts, 3, "{workflow:?}");
    assert_stamped_in_real_time(&workflow, &retried, seen_ms);
    let events = events(cluster.addr(leader), retried.id).await;
    for event in &events {
        assert!(
            event.time_ms + STAMP_SLACK_MS >= retried.before_ms
                && event.time_ms <= seen_ms + STAMP_SLACK_MS,
            "event stamped outside real time: {event:?}"
        );
    }
    let backoffs = assert_backoffs(&events, &retried_spec.steps[0]);
    tracing::info!(?backoffs, "the retries' backoffs, ms of state time");

    tracing::info!(
        leader,
        "--- the leader, an hour ahead, is killed under a pending deadline"
    );
    cluster.step_clock(leader, HOUR_S).await;
    cluster.wait_offset_metric(leader, HOUR_S).await;
    const W3_TIMEOUT_MS: u64 = 10_000;
    let w3 = cluster.submit(waiting_spec("w3", W3_TIMEOUT_MS)).await;
    cluster.kill(leader);
    let second = cluster.leader().await;
    tracing::info!(leader = second, "new leader");
    cluster.wait_offset_metric(second, 0).await;
    let w4 = cluster.submit(waiting_spec("w4", 2_000)).await;
    cluster.failed_on_deadline(&w4, 2_000).await;

    tracing::info!(
        node = leader,
        "--- the fast node restarts, still an hour ahead, and leads again"
    );
    cluster.spawn(leader);
    cluster.leader().await;
    const W5_TIMEOUT_MS: u64 = 10_000;
    let w5 = cluster.submit(waiting_spec("w5", W5_TIMEOUT_MS)).await;
    cluster.transfer_leader(leader).await;
    // Its wall clock is an hour ahead of what it stamps: the voters' median anchored it.
    cluster.wait_offset_metric(leader, HOUR_S).await;
    let w6 = cluster.submit(waiting_spec("w6", 2_000)).await;
    cluster.failed_on_deadline(&w6, 2_000).await;
    let (workflow, seen_ms) = cluster.get(&w5).await;
    assert_waiting_or_due(&workflow, &w5, W5_TIMEOUT_MS, seen_ms);
    cluster.failed_on_deadline(&w3, W3_TIMEOUT_MS).await;
    cluster.failed_on_deadline(&w5, W5_TIMEOUT_MS).await;
    // W0 waited through both leader changes too (unless the machine was slow enough for its
    // deadline to come first, which the check allows as long as it was not early).
    tracing::info!("--- W0 fails on its own deadline");
    cluster.failed_on_deadline(&w0, W0_TIMEOUT_MS).await;

    let slow = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    tracing::info!(
        node = slow,
        "--- a node an hour behind takes over from the one an hour ahead, after an idle spell"
    );
    cluster.step_clock(slow, -HOUR_S).await;
    const W7_TIMEOUT_MS: u64 = 10_000;
    let w7 = cluster.submit(waiting_spec("w7", W7_TIMEOUT_MS)).await;
    // Deliberately idle: state time moves only with entries, so its last stamp falls behind real
    // time while nothing happens. A new leader that anchored at state time rather than at the
    // voters' clocks would lose this spell (and push every pending deadline back by it).
    tokio::time::sleep(IDLE_SPELL).await;
    cluster.transfer_leader(slow).await;
    cluster.wait_offset_metric(slow, -HOUR_S).await;
    // The median of an hour behind, an hour ahead and right is the one right clock: W8 is
    // stamped in real time, idle spell included (`submit` checks it).
    let w8 = cluster.submit(waiting_spec("w8", 2_000)).await;
    cluster.failed_on_deadline(&w8, 2_000).await;
    cluster.failed_on_deadline(&w7, W7_TIMEOUT_MS).await;

    drop(agent);
    drop(cluster);
}
