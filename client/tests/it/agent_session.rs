//! The agent's session loop against scripted fake AgentService nodes on loopback: register,
//! run, report, re-send after a reconnect, follow a leader redirect, and kill what the cluster
//! no longer leases to it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::Endpoints;
use baton_client::agent::{Agent, AgentConfig, LEADER_METADATA_KEY};
use baton_client::proto::agent_message::Msg as AgentMsg;
use baton_client::proto::agent_service_server::{AgentService, AgentServiceServer};
use baton_client::proto::server_message::Msg as ServerMsg;
use baton_client::proto::step_spec::Task;
use baton_client::proto::*;
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(20);

type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// What a fake node does and what it heard.
#[derive(Default)]
struct Node {
    /// When set, every session is refused as by a follower naming this leader.
    leader: Option<String>,
    /// Registered.attached_attempts: the node re-attaches whatever it is told to here.
    attached: Mutex<Vec<u64>>,
    /// Every message received, on all sessions, in order.
    received: Mutex<Vec<AgentMessage>>,
    /// The sender of the latest session, to push server messages.
    session: Mutex<Option<Outbound>>,
    sessions_opened: Mutex<u32>,
    /// Sessions refused with the redirect (when `leader` is set).
    sessions_refused: Mutex<u32>,
    /// Sessions whose inbound stream has ended: nothing more can arrive on them. (tonic shows
    /// a client's cancel as a clean end too; whatever that reset discarded never left the
    /// agent.)
    sessions_ended: Mutex<u32>,
    changed: Notify,
}

struct Fake(Arc<Node>);

#[tonic::async_trait]
impl AgentService for Fake {
    type SessionStream = Pin<Box<dyn futures::Stream<Item = Result<ServerMessage, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let node = self.0.clone();
        if let Some(leader) = &node.leader {
            *node.sessions_refused.lock().unwrap() += 1;
            let mut status = Status::failed_precondition("not the leader");
            status
                .metadata_mut()
                .insert(LEADER_METADATA_KEY, leader.parse().unwrap());
            return Err(status);
        }
        let mut inbound = request.into_inner();
        let Ok(Some(register)) = inbound.message().await else {
            return Err(Status::invalid_argument("expected Register"));
        };
        node.record(register);
        let (tx, rx) = mpsc::channel(64);
        let attached = node.attached.lock().unwrap().clone();
        tx.send(Ok(ServerMessage {
            msg: Some(ServerMsg::Registered(Registered {
                agent_id: 9,
                heartbeat_interval_ms: 50,
                attached_attempts: attached,
            })),
        }))
        .await
        .unwrap();
        *node.session.lock().unwrap() = Some(tx);
        *node.sessions_opened.lock().unwrap() += 1;
        node.changed.notify_waiters();
        let reader = node.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                reader.record(message);
            }
            *reader.sessions_ended.lock().unwrap() += 1;
            reader.changed.notify_waiters();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl Node {
    fn record(&self, message: AgentMessage) {
        self.received.lock().unwrap().push(message);
        self.changed.notify_waiters();
    }

    /// Waits until `find` matches something received (checked on every change), with a deadline.
    async fn wait_for<T>(&self, what: &str, mut find: impl FnMut(&Node) -> Option<T>) -> T {
        let give_up = Instant::now() + DEADLINE;
        loop {
            let changed = self.changed.notified();
            if let Some(found) = find(self) {
                return found;
            }
            let left = give_up.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            // Also wake periodically: the Notify may fire between the check and the wait.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), changed).await;
        }
    }

    fn messages(&self) -> Vec<AgentMsg> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|message| message.msg.clone())
            .collect()
    }

    fn registers(&self) -> Vec<Register> {
        self.messages()
            .into_iter()
            .filter_map(|message| match message {
                AgentMsg::Register(register) => Some(register),
                _ => None,
            })
            .collect()
    }

    fn reports(&self) -> Vec<Report> {
        self.messages()
            .into_iter()
            .filter_map(|message| match message {
                AgentMsg::Report(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    fn heartbeats(&self) -> Vec<Heartbeat> {
        self.messages()
            .into_iter()
            .filter_map(|message| match message {
                AgentMsg::Heartbeat(heartbeat) => Some(heartbeat),
                _ => None,
            })
            .collect()
    }

    async fn send(&self, msg: ServerMsg) {
        let tx = self
            .session
            .lock()
            .unwrap()
            .clone()
            .expect("a session is open");
        tx.send(Ok(ServerMessage { msg: Some(msg) })).await.unwrap();
    }

    /// Shuts `agent` down, then waits until every session this node opened has ended. The
    /// agent closes a session's stream only once it stopped using it, so from then on the node
    /// has recorded everything of the agent's that will ever reach it: the barrier before
    /// asserting that something was never sent.
    async fn drain(&self, agent: RunningAgent) {
        agent.shut_down().await;
        self.wait_for("every session to end", |node| {
            let opened = *node.sessions_opened.lock().unwrap();
            (*node.sessions_ended.lock().unwrap() == opened).then_some(())
        })
        .await;
    }

    /// Ends the current session from the server side.
    fn hang_up(&self) {
        self.session.lock().unwrap().take();
    }
}

async fn start(node: Node) -> (SocketAddr, Arc<Node>) {
    let node = Arc::new(node);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(AgentServiceServer::new(Fake(node.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (address, node)
}

/// A running agent; dropping the stop sender shuts it down.
struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    async fn shut_down(mut self) {
        drop(self.stop.take());
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the agent shuts down")
            .unwrap();
    }
}

fn run_agent(endpoints: &[SocketAddr]) -> RunningAgent {
    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let agent = Agent::builder(Endpoints::parse(&list.join(",")).unwrap())
        .config(AgentConfig {
            name: "test-agent".into(),
            slots: 2,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..AgentConfig::default()
        })
        .label("zone", "eu")
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    RunningAgent {
        stop: Some(stop),
        task,
    }
}

fn assignment(attempt_id: u64, task: Task, lease_ttl_ms: u64) -> Assignment {
    Assignment {
        workflow_id: 42,
        step: format!("step-{attempt_id}"),
        attempt_id,
        attempt_number: 1,
        spec: Some(StepSpec {
            name: format!("step-{attempt_id}"),
            task: Some(task),
            ..Default::default()
        }),
        lease_ttl_ms,
        ..Default::default()
    }
}

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An exec step that records its pid, then sleeps (as the same process) for a long time.
fn long_step(pid_file: &std::path::Path) -> Task {
    Task::Exec(ExecTask {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo $$ > {p}.tmp && mv {p}.tmp {p}; exec sleep 100",
                p = pid_file.display()
            ),
        ],
        ..Default::default()
    })
}

#[tokio::test]
async fn registers_runs_reports_and_resends_an_unacknowledged_report() {
    let (address, node) = start(Node::default()).await;
    let agent = run_agent(&[address]);

    let register = node
        .wait_for("Register", |node| node.registers().into_iter().next())
        .await;
    assert_eq!(register.name, "test-agent");
    assert_eq!(register.slots, 2);
    assert_eq!(register.labels.get("zone").map(String::as_str), Some("eu"));
    assert_eq!(register.task_types, ["exec", "http", "noop", "sleep"]);
    assert!(register.running_attempts.is_empty());

    node.send(ServerMsg::Assignment(assignment(
        101,
        Task::Sleep(SleepTask { duration_ms: 20 }),
        5000,
    )))
    .await;
    let report = node
        .wait_for("the report", |node| node.reports().into_iter().next())
        .await;
    assert_eq!(report.attempt_id, 101);
    assert!(report.success, "{report:?}");
    assert!(report.finished_at_ms >= report.started_at_ms && report.started_at_ms > 0);

    // The session breaks before the report is accepted: the agent reconnects and sends it again.
    node.hang_up();
    node.wait_for("the report again on a new session", |node| {
        (*node.sessions_opened.lock().unwrap() >= 2 && node.reports().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(node.reports()[1], report);
    node.send(ServerMsg::ReportAccepted(ReportAccepted {
        attempt_id: 101,
    }))
    .await;

    // Heartbeats flow, numbered upwards, and list nothing once the attempt is done.
    let heartbeats = node
        .wait_for("two heartbeats after the accept", |node| {
            let beats = node.heartbeats();
            (beats.len() >= 3).then_some(beats)
        })
        .await;
    let last = &heartbeats[heartbeats.len() - 1];
    let before = &heartbeats[heartbeats.len() - 2];
    assert!(last.seq > before.seq || last.seq == 1, "{heartbeats:?}");
    assert!(last.running_attempts.is_empty());
    agent.shut_down().await;
}

#[tokio::test]
async fn a_follower_redirects_the_agent_to_the_leader() {
    let (leader_address, leader) = start(Node::default()).await;
    let (follower_address, follower) = start(Node {
        leader: Some(leader_address.to_string()),
        ..Node::default()
    })
    .await;
    // Only the follower is configured: the leader can only be found through the redirect.
    let agent = run_agent(&[follower_address]);
    let register = leader
        .wait_for("Register on the leader", |node| {
            node.registers().into_iter().next()
        })
        .await;
    assert_eq!(register.name, "test-agent");
    // The agent did ask the follower first (it knows no other address), and was sent on.
    assert!(*follower.sessions_refused.lock().unwrap() >= 1);
    agent.shut_down().await;
}

#[tokio::test]
async fn an_attempt_missing_from_a_heartbeat_ack_is_killed_and_not_reported() {
    let (address, node) = start(Node::default()).await;
    let agent = run_agent(&[address]);
    node.wait_for("Register", |node| node.registers().into_iter().next())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("step.pid");
    node.send(ServerMsg::Assignment(assignment(
        201,
        long_step(&pid_file),
        60_000,
    )))
    .await;
    wait_until("the step started", || read_pid(&pid_file).is_some()).await;
    let pid = read_pid(&pid_file).unwrap();
    let heartbeat = node
        .wait_for("a heartbeat listing the attempt", |node| {
            node.heartbeats()
                .into_iter()
                .find(|beat| beat.running_attempts.contains(&201))
        })
        .await;
    assert!(!is_dead(pid));

    node.send(ServerMsg::HeartbeatAck(HeartbeatAck {
        seq: heartbeat.seq,
        renewed_attempts: vec![],
    }))
    .await;
    wait_until(&format!("step process {pid} is killed"), || is_dead(pid)).await;
    // Later heartbeats no longer list it, and it is never reported.
    let seen = node.heartbeats().len();
    node.wait_for("a later heartbeat without the attempt", |node| {
        node.heartbeats()
            .into_iter()
            .skip(seen)
            .find(|beat| !beat.running_attempts.contains(&201))
    })
    .await;
    node.drain(agent).await;
    assert!(node.reports().is_empty(), "{:?}", node.reports());
}

#[tokio::test]
async fn an_unrenewed_lease_self_fences() {
    let (address, node) = start(Node::default()).await;
    let agent = run_agent(&[address]);
    node.wait_for("Register", |node| node.registers().into_iter().next())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("step.pid");
    // A 1 s TTL, and the node never acknowledges a heartbeat: the agent kills the step when
    // the deadline (TTL minus the 500 ms margin) passes, without being told anything.
    node.send(ServerMsg::Assignment(assignment(
        301,
        long_step(&pid_file),
        1000,
    )))
    .await;
    wait_until("the step started", || read_pid(&pid_file).is_some()).await;
    let pid = read_pid(&pid_file).unwrap();
    wait_until(&format!("step process {pid} is killed"), || is_dead(pid)).await;
    node.drain(agent).await;
    assert!(node.reports().is_empty(), "{:?}", node.reports());
}

#[tokio::test]
async fn a_reconnect_stops_attempts_the_cluster_did_not_reattach() {
    let (address, node) = start(Node::default()).await;
    let agent = run_agent(&[address]);
    node.wait_for("Register", |node| node.registers().into_iter().next())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kept_file = dir.path().join("kept.pid");
    let dropped_file = dir.path().join("dropped.pid");
    node.send(ServerMsg::Assignment(assignment(
        401,
        long_step(&kept_file),
        60_000,
    )))
    .await;
    node.send(ServerMsg::Assignment(assignment(
        402,
        long_step(&dropped_file),
        60_000,
    )))
    .await;
    wait_until("both steps started", || {
        read_pid(&kept_file).is_some() && read_pid(&dropped_file).is_some()
    })
    .await;
    let (kept, dropped) = (
        read_pid(&kept_file).unwrap(),
        read_pid(&dropped_file).unwrap(),
    );

    *node.attached.lock().unwrap() = vec![401];
    node.hang_up();
    let register = node
        .wait_for("a second Register", |node| {
            node.registers().into_iter().nth(1)
        })
        .await;
    assert_eq!(register.running_attempts, [401, 402]);
    wait_until(&format!("step process {dropped} is killed"), || {
        is_dead(dropped)
    })
    .await;
    // A heartbeat on the new session lists the re-attached attempt alone: the agent has settled
    // what it keeps, and after that the kept step still runs.
    node.wait_for("a heartbeat listing only the re-attached attempt", |node| {
        let messages = node.messages();
        let (second_register, _) = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m, AgentMsg::Register(_)))
            .nth(1)?;
        messages[second_register..].iter().find_map(|m| match m {
            AgentMsg::Heartbeat(beat) if beat.running_attempts == [401] => Some(()),
            _ => None,
        })
    })
    .await;
    assert!(!is_dead(kept), "the re-attached attempt keeps running");
    node.drain(agent).await;
    // Shutdown stops the rest.
    wait_until(&format!("step process {kept} is killed"), || is_dead(kept)).await;
    assert!(node.reports().is_empty(), "{:?}", node.reports());
}
