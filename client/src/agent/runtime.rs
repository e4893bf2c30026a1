//! The agent's event loop: sessions with the leader, attempts, leases and reports.
//!
//! One task owns all of the agent's state and reacts to five kinds of event: a server message,
//! the heartbeat tick, an attempt finishing, a lease deadline, and shutdown. Attempts run in
//! tasks of their own and only send their result back, so nothing here is shared or locked.
//! The state outlives sessions: while the agent reconnects, attempts keep running, leases keep
//! counting down (and self-fence), and results wait as unacknowledged reports.
//!
//! ```text
//!  connect ──FAILED_PRECONDITION + baton-leader──▶ connect to the leader
//!     │  ▲                                      (any other failure: next endpoint, backoff)
//!     ▼  └──────────── stream lost ──────────────┐
//!  Register ─▶ Registered ─▶ stop the attempts not re-attached, re-send unacked reports
//!     ─▶ serve: Assignment / StopAttempt / HeartbeatAck / ReportAccepted / ReportRejected
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::tls::Transport;
use baton_proto::v1::agent_message::Msg as AgentMsg;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use baton_proto::v1::server_message::Msg as ServerMsg;
use baton_proto::v1::step_spec::Task;
use baton_proto::v1::{
    AgentMessage, Assignment, Heartbeat, Register, Registered, Report, ServerMessage,
};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::agent::AgentConfig;
use crate::agent::backoff::Backoff;
use crate::agent::executor::{Executors, PreparedTask, TaskResult};
use crate::agent::handler::{AttemptControl, StopReason, TaskContext, TaskContextParts};
use crate::agent::lease::LeaseTable;
use crate::agent::metrics;
use crate::agent::secrets::mask;
use crate::agent::template::{StepIdentity, TemplateValues, step_env};
use crate::client::{DECODE_MESSAGE_BYTES_MAX, ENCODE_MESSAGE_BYTES_MAX, channel};
use crate::endpoints::{Endpoint, Endpoints};
use crate::error::describe_status;

/// The metadata key a follower names the leader in (`HOST:PORT`).
pub const LEADER_METADATA_KEY: &str = "baton-leader";

/// Messages queued for the server. A session whose queue fills up is stuck (the server stopped
/// reading): it is dropped and reconnected rather than waited on, since waiting would also stop
/// this loop from enforcing lease deadlines.
const OUTBOUND_QUEUE_MAX: usize = 1024;

/// How long a heartbeat may go unacknowledged before the session is given up: a node that
/// is paused, or a leader that lost its quorum, keeps the connection open but stops renewing.
/// Leases are enforced by their own deadlines either way; this only makes the agent look for
/// the leader elsewhere instead of waiting on a node that cannot serve it.
fn ack_patience(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval * 5).max(Duration::from_millis(
        baton_proto::limits::AGENT_UNACKED_MS_MIN,
    ))
}

/// Heartbeat interval when the server sends 0, and the least the agent accepts.
const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(20);

/// Lease TTL when an assignment carries 0 (the cluster default, see `limits::LEASE_TTL_MS_DEFAULT`).
const LEASE_TTL_DEFAULT: Duration =
    Duration::from_millis(baton_proto::limits::LEASE_TTL_MS_DEFAULT);

/// How long shutdown waits for stopped attempts to end: the SIGTERM grace, then the kill.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// One attempt's result, sent by its task.
pub(crate) struct Finished {
    pub attempt_id: u64,
    pub result: TaskResult,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// An attempt this agent runs.
struct RunningAttempt {
    workflow_id: u64,
    step: String,
    control: AttemptControl,
    /// `None` while running; once stopped, why. Decides whether its result is reported.
    stopped: Option<StopReason>,
}

/// An open session after Registered.
struct Session {
    endpoint: Endpoint,
    outbound: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<ServerMessage>,
    registered: Registered,
}

/// Why a session, or an attempt to open one, ended.
enum SessionEnd {
    Shutdown,
    /// A follower named the leader.
    Redirect(Endpoint),
    Lost(String),
}

/// Where to connect next.
struct Targets {
    endpoints: Endpoints,
    /// Index into `endpoints` of the next one to try when no leader is known.
    next: usize,
    leader: Option<Endpoint>,
}

impl Targets {
    fn current(&self) -> Endpoint {
        match &self.leader {
            Some(leader) => leader.clone(),
            None => self.endpoints.as_slice()[self.next % self.endpoints.len()].clone(),
        }
    }

    fn redirect(&mut self, leader: Endpoint, dial: &HashMap<Endpoint, Endpoint>) {
        self.leader = Some(dial.get(&leader).cloned().unwrap_or(leader));
    }

    /// The current target failed: a named leader is forgotten (back to the list where we left
    /// it), otherwise move along the list.
    fn failed(&mut self) {
        if self.leader.take().is_none() {
            self.next = (self.next + 1) % self.endpoints.len();
        }
    }
}

pub(crate) struct Runtime {
    config: Arc<AgentConfig>,
    executors: Arc<Executors>,
    targets: Targets,
    channels: HashMap<Endpoint, Transport>,
    attempts: HashMap<u64, RunningAttempt>,
    leases: LeaseTable,
    /// Finished attempts' reports not yet acknowledged by ReportAccepted or ReportRejected.
    reports: BTreeMap<u64, Report>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    /// The agent id of the latest session, for logs.
    agent_id: Option<u64>,
}

impl Runtime {
    pub fn new(
        config: Arc<AgentConfig>,
        endpoints: Endpoints,
        executors: Arc<Executors>,
    ) -> Runtime {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        metrics::slots(config.slots);
        Runtime {
            config,
            executors,
            targets: Targets {
                endpoints,
                next: 0,
                leader: None,
            },
            channels: HashMap::new(),
            attempts: HashMap::new(),
            leases: LeaseTable::new(),
            reports: BTreeMap::new(),
            finished_tx,
            finished_rx,
            agent_id: None,
        }
    }

    /// Runs until `shutdown` completes, then stops every attempt and returns once they ended.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let endpoint = self.targets.current();
            let channel = match self.channel(&endpoint) {
                Ok(channel) => channel,
                Err(message) => {
                    warn!(agent = %self.config.name, %endpoint, error = %message, "cannot use endpoint");
                    self.targets.failed();
                    if self.wait(backoff.next_delay(), &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let register = self.register_message();
            let reported_running = register.running_attempts.clone();
            let opening = open_session(
                channel,
                endpoint.clone(),
                register,
                self.config.register_timeout,
            );
            let end = match self.while_busy(opening, &mut shutdown).await {
                None => SessionEnd::Shutdown,
                Some(Ok(session)) => {
                    backoff.reset();
                    metrics::connected(true);
                    let end = self.serve(session, &reported_running, &mut shutdown).await;
                    metrics::connected(false);
                    end
                }
                Some(Err(end)) => end,
            };
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Redirect(leader) => {
                    info!(agent = %self.config.name, from = %endpoint, leader = %leader, "redirected to the leader");
                    self.targets.redirect(leader, &self.config.dial);
                }
                SessionEnd::Lost(reason) => {
                    metrics::session_failed();
                    warn!(agent = %self.config.name, %endpoint, error = %reason, "no session with the cluster; reconnecting");
                    self.targets.failed();
                }
            }
            if self.wait(backoff.next_delay(), &mut shutdown).await {
                break;
            }
        }
        self.shut_down().await;
    }

    fn channel(&mut self, endpoint: &Endpoint) -> Result<Transport, String> {
        if let Some(channel) = self.channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = channel(endpoint, &self.config.client_config()).map_err(|e| e.to_string())?;
        self.channels.insert(endpoint.clone(), channel.clone());
        Ok(channel)
    }

    fn register_message(&self) -> Register {
        let mut running: Vec<u64> = self
            .attempts
            .iter()
            .filter(|(_, attempt)| attempt.stopped.is_none())
            .map(|(attempt_id, _)| *attempt_id)
            .collect();
        running.sort_unstable();
        Register {
            name: self.config.name.clone(),
            labels: self.config.labels.clone(),
            slots: self.config.slots,
            cpu_millis: self.config.cpu_millis,
            memory_mb: self.config.memory_mb,
            running_attempts: running,
            task_types: self.executors.task_types(),
            namespaces: self.config.namespaces.iter().cloned().collect(),
        }
    }

    /// Drives `work` while still handling finished attempts and lease deadlines, which must
    /// not wait for a connection. `None` if shutdown came first.
    async fn while_busy<T>(
        &mut self,
        work: impl Future<Output = T>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<T> {
        let mut work = pin!(work);
        loop {
            let deadline = self.leases.next_deadline();
            tokio::select! {
                biased;
                _ = &mut *shutdown => return None,
                Some(finished) = self.finished_rx.recv() => {
                    self.on_finished(finished, None);
                }
                _ = sleep_until(deadline) => self.enforce_deadlines(),
                output = &mut work => return Some(output),
            }
        }
    }

    /// Waits out a backoff; true if shutdown came first.
    async fn wait(
        &mut self,
        delay: Duration,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        self.while_busy(tokio::time::sleep(delay), shutdown)
            .await
            .is_none()
    }

    async fn serve(
        &mut self,
        mut session: Session,
        reported_running: &[u64],
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> SessionEnd {
        let agent_id = session.registered.agent_id;
        self.agent_id = Some(agent_id);
        let attached: HashSet<u64> = session
            .registered
            .attached_attempts
            .iter()
            .copied()
            .collect();
        info!(
            agent = %self.config.name,
            agent_id,
            endpoint = %session.endpoint,
            reattached = attached.len(),
            unacked_reports = self.reports.len(),
            "registered"
        );
        self.leases.new_session();
        // Attempts the cluster no longer leases to us were requeued elsewhere: stop them now.
        for attempt_id in reported_running {
            if !attached.contains(attempt_id) && self.attempts.contains_key(attempt_id) {
                self.stop(*attempt_id, StopReason::NotAttached);
            }
        }
        // Every unacknowledged report goes again; the server refuses stale ones.
        let reports: Vec<Report> = self.reports.values().cloned().collect();
        for report in reports {
            if let Err(end) = send(&session, AgentMsg::Report(report)) {
                return end;
            }
        }
        let interval = match session.registered.heartbeat_interval_ms {
            0 => HEARTBEAT_INTERVAL_DEFAULT,
            ms => Duration::from_millis(ms).max(HEARTBEAT_INTERVAL_MIN),
        };
        // The first tick is immediate: re-attached leases get renewed as soon as possible.
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq: u64 = 0;
        loop {
            let deadline = self.leases.next_deadline();
            tokio::select! {
                biased;
                _ = &mut *shutdown => return SessionEnd::Shutdown,
                _ = sleep_until(deadline) => self.enforce_deadlines(),
                message = session.inbound.message() => match message {
                    Ok(Some(message)) => self.on_server_message(message),
                    Ok(None) => return SessionEnd::Lost("the node ended the session".into()),
                    Err(status) => return end_of(status),
                },
                Some(finished) = self.finished_rx.recv() => {
                    if let Some(report) = self.on_finished(finished, Some(&session))
                        && let Err(end) = send(&session, AgentMsg::Report(report))
                    {
                        return end;
                    }
                }
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if let Some(sent_at) = self.leases.oldest_unacked()
                        && now.duration_since(sent_at) > ack_patience(interval)
                    {
                        return SessionEnd::Lost(format!(
                            "no heartbeat acknowledged for {} ms",
                            now.duration_since(sent_at).as_millis()
                        ));
                    }
                    seq += 1;
                    let running_attempts = self.leases.heartbeat_sent(seq, now);
                    if let Err(end) = send(&session, AgentMsg::Heartbeat(Heartbeat { running_attempts, seq })) {
                        return end;
                    }
                }
            }
        }
    }

    fn on_server_message(&mut self, message: ServerMessage) {
        let Some(message) = message.msg else {
            debug!(agent = %self.config.name, "empty server message ignored");
            return;
        };
        match message {
            ServerMsg::Registered(_) => {
                warn!(agent = %self.config.name, "a second Registered on one session ignored");
            }
            ServerMsg::Assignment(assignment) => self.start(assignment),
            ServerMsg::Stop(stop) => {
                if self.attempts.contains_key(&stop.attempt_id) {
                    self.stop(
                        stop.attempt_id,
                        StopReason::StoppedByCluster {
                            reason: stop.reason,
                        },
                    );
                } else {
                    debug!(agent = %self.config.name, attempt = stop.attempt_id, "stop for an attempt not running here");
                }
            }
            ServerMsg::HeartbeatAck(ack) => {
                for attempt_id in self.leases.acknowledged(ack.seq, &ack.renewed_attempts) {
                    self.stop(attempt_id, StopReason::LeaseLost);
                }
            }
            ServerMsg::ReportAccepted(accepted) => {
                let removed = self.reports.remove(&accepted.attempt_id).is_some();
                metrics::reports_pending(self.reports.len());
                if removed {
                    debug!(agent = %self.config.name, attempt = accepted.attempt_id, "report accepted");
                }
            }
            ServerMsg::Rejected(rejected) => {
                self.reports.remove(&rejected.attempt_id);
                metrics::report_rejected();
                metrics::reports_pending(self.reports.len());
                warn!(
                    agent = %self.config.name,
                    attempt = rejected.attempt_id,
                    reason = %rejected.reason,
                    "report rejected by the cluster; dropped"
                );
                // "The agent drops the attempt": should it somehow still run, stop it.
                if self.attempts.contains_key(&rejected.attempt_id) {
                    self.stop(rejected.attempt_id, StopReason::LeaseLost);
                }
            }
        }
    }

    /// Starts an assigned attempt in a task of its own.
    fn start(&mut self, assignment: Assignment) {
        let attempt_id = assignment.attempt_id;
        if self.attempts.contains_key(&attempt_id) || self.reports.contains_key(&attempt_id) {
            // A re-sent assignment (after a reconnect) for an attempt already here.
            debug!(agent = %self.config.name, attempt = attempt_id, "duplicate assignment ignored");
            return;
        }
        let running = self.attempts.len();
        if running >= self.config.slots as usize {
            // The leader is the authority on capacity; running it anyway keeps the cluster's
            // view and ours the same. But it means the two disagree, which is a bug somewhere.
            error!(
                agent = %self.config.name,
                attempt = attempt_id,
                running,
                slots = self.config.slots,
                "assigned more attempts than slots; running it anyway"
            );
        }
        let ttl = match assignment.lease_ttl_ms {
            0 => LEASE_TTL_DEFAULT,
            ms => Duration::from_millis(ms),
        };
        self.leases.grant(attempt_id, ttl, Instant::now());
        let control = AttemptControl::new();
        info!(
            agent = %self.config.name,
            workflow = assignment.workflow_id,
            step = %assignment.step,
            attempt = attempt_id,
            attempt_number = assignment.attempt_number,
            "attempt started"
        );
        self.attempts.insert(
            attempt_id,
            RunningAttempt {
                workflow_id: assignment.workflow_id,
                step: assignment.step.clone(),
                control: control.clone(),
                stopped: None,
            },
        );
        metrics::attempt_started(self.attempts.len());
        let executors = self.executors.clone();
        let finished_tx = self.finished_tx.clone();
        // Whatever the executors log about this attempt carries its identity.
        let span = info_span!(
            "attempt",
            agent = %self.config.name,
            workflow = assignment.workflow_id,
            step = %assignment.step,
            attempt = attempt_id,
        );
        tokio::spawn(
            async move {
                let finished = run_attempt(&executors, assignment, control).await;
                // The receiver lives as long as the runtime; after it, nobody wants the result.
                let _ = finished_tx.send(finished);
            }
            .instrument(span),
        );
    }

    /// Stops an attempt for `reason`: its lease is no longer renewed (heartbeats stop listing
    /// it) and its process is killed; it keeps its slot until it has actually ended.
    fn stop(&mut self, attempt_id: u64, reason: StopReason) {
        self.leases.remove(attempt_id);
        let Some(attempt) = self.attempts.get_mut(&attempt_id) else {
            return;
        };
        if attempt.stopped.is_some() {
            return;
        }
        match &reason {
            StopReason::LeaseLost | StopReason::LeaseExpired | StopReason::NotAttached => warn!(
                agent = %self.config.name,
                workflow = attempt.workflow_id,
                step = %attempt.step,
                attempt = attempt_id,
                reason = %reason,
                "killing attempt"
            ),
            _ => info!(
                agent = %self.config.name,
                workflow = attempt.workflow_id,
                step = %attempt.step,
                attempt = attempt_id,
                reason = %reason,
                "stopping attempt"
            ),
        }
        attempt.control.stop(reason.clone());
        attempt.stopped = Some(reason);
    }

    /// Self-fencing: every attempt whose lease deadline has passed is killed.
    fn enforce_deadlines(&mut self) {
        for attempt_id in self.leases.take_expired(Instant::now()) {
            self.stop(attempt_id, StopReason::LeaseExpired);
        }
    }

    /// Records an attempt's end. Returns the report to send, if it is reported and a session
    /// is open (without one it waits in `reports` for the next).
    fn on_finished(&mut self, finished: Finished, session: Option<&Session>) -> Option<Report> {
        let attempt_id = finished.attempt_id;
        self.leases.remove(attempt_id);
        let attempt = self.attempts.remove(&attempt_id)?;
        if let Some(reason) = attempt.stopped.filter(|reason| !reason.is_reported()) {
            metrics::attempt_killed(self.attempts.len(), &reason);
            info!(
                agent = %self.config.name,
                workflow = attempt.workflow_id,
                step = %attempt.step,
                attempt = attempt_id,
                reason = %reason,
                "attempt ended after being stopped; not reported"
            );
            return None;
        }
        let result = finished.result;
        info!(
            agent = %self.config.name,
            workflow = attempt.workflow_id,
            step = %attempt.step,
            attempt = attempt_id,
            success = result.success,
            exit_code = ?result.exit_code,
            "attempt finished"
        );
        let report = Report {
            attempt_id,
            success: result.success,
            output: result.output,
            error: result.error,
            exit_code: result.exit_code,
            started_at_ms: finished.started_at_ms,
            finished_at_ms: finished.finished_at_ms,
        };
        metrics::attempt_reported(
            self.attempts.len(),
            report.success,
            Duration::from_millis(
                finished
                    .finished_at_ms
                    .saturating_sub(finished.started_at_ms),
            ),
        );
        self.reports.insert(attempt_id, report.clone());
        metrics::reports_pending(self.reports.len());
        session.map(|_| report)
    }

    /// Stops every attempt and waits (bounded) for them to end. Their results are not reported:
    /// an agent going away is not the step failing; the cluster requeues them when their
    /// leases expire.
    async fn shut_down(&mut self) {
        let running: Vec<u64> = self.attempts.keys().copied().collect();
        info!(agent = %self.config.name, attempts = running.len(), "shutting down");
        for attempt_id in running {
            self.stop(attempt_id, StopReason::Shutdown);
        }
        let give_up = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while !self.attempts.is_empty() {
            match tokio::time::timeout_at(give_up, self.finished_rx.recv()).await {
                Ok(Some(finished)) => {
                    self.on_finished(finished, None);
                }
                Ok(None) | Err(_) => {
                    warn!(agent = %self.config.name, attempts = self.attempts.len(), "attempts still ending at shutdown");
                    break;
                }
            }
        }
    }
}

/// Opens a session on `endpoint`: sends Register first (the server reads it before it
/// answers), then waits for Registered.
async fn open_session(
    channel: Transport,
    endpoint: Endpoint,
    register: Register,
    register_timeout: Duration,
) -> Result<Session, SessionEnd> {
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE_MAX);
    // A fresh queue has room.
    let _ = outbound.try_send(AgentMessage {
        msg: Some(AgentMsg::Register(register)),
    });
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(DECODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENCODE_MESSAGE_BYTES_MAX);
    let opening = async {
        let mut inbound = client
            .session(ReceiverStream::new(queue))
            .await
            .map_err(end_of)?
            .into_inner();
        match inbound.message().await {
            Ok(Some(ServerMessage {
                msg: Some(ServerMsg::Registered(registered)),
            })) => Ok((inbound, registered)),
            Ok(Some(_)) => Err(SessionEnd::Lost(
                "the node answered Register with something other than Registered".into(),
            )),
            Ok(None) => Err(SessionEnd::Lost(
                "the node closed the session before Registered".into(),
            )),
            Err(status) => Err(end_of(status)),
        }
    };
    let (inbound, registered) = tokio::time::timeout(register_timeout, opening)
        .await
        .map_err(|_| {
            SessionEnd::Lost(format!(
                "no Registered within {} ms",
                register_timeout.as_millis()
            ))
        })??;
    Ok(Session {
        endpoint,
        outbound,
        inbound,
        registered,
    })
}

/// A status that ended a session: a redirect when a follower named the leader.
fn end_of(status: tonic::Status) -> SessionEnd {
    if status.code() == tonic::Code::FailedPrecondition
        && let Some(leader) = leader_of(&status)
    {
        return SessionEnd::Redirect(leader);
    }
    SessionEnd::Lost(describe_status(&status))
}

/// The leader named in a status' `baton-leader` metadata, if it parses.
pub(crate) fn leader_of(status: &tonic::Status) -> Option<Endpoint> {
    let value = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    Endpoint::parse(value).ok()
}

fn send(session: &Session, message: AgentMsg) -> Result<(), SessionEnd> {
    match session
        .outbound
        .try_send(AgentMessage { msg: Some(message) })
    {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(SessionEnd::Lost(
            "the node stopped reading the session".into(),
        )),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            Err(SessionEnd::Lost("the session closed".into()))
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs one attempt: fills in templates, enforces the execution timeout, contains panics.
pub(crate) async fn run_attempt(
    executors: &Executors,
    assignment: Assignment,
    control: AttemptControl,
) -> Finished {
    let started_at_ms = now_ms();
    let attempt_id = assignment.attempt_id;
    let env = step_env(
        StepIdentity {
            workflow_id: assignment.workflow_id,
            step: &assignment.step,
            attempt_id,
            attempt_number: assignment.attempt_number,
        },
        TemplateValues {
            input: &assignment.workflow_input,
            steps: &assignment.inputs,
            secrets: &BTreeMap::new(),
            namespace: &assignment.namespace,
        },
    );
    let timeout = (assignment.timeout_ms > 0).then(|| Duration::from_millis(assignment.timeout_ms));
    let secrets = match executors.secrets_of(&assignment) {
        Ok(secrets) => secrets,
        Err(error) => {
            return Finished {
                attempt_id,
                result: TaskResult::failed(error).bounded(),
                started_at_ms,
                finished_at_ms: now_ms(),
            };
        }
    };
    let mut result = match PreparedTask::prepare(&assignment, &env, &secrets) {
        Err(error) => TaskResult::failed(error.to_string()),
        Ok(task) => {
            let (task_type, payload) =
                match assignment.spec.as_ref().and_then(|spec| spec.task.as_ref()) {
                    Some(Task::Custom(custom)) => (custom.r#type.clone(), custom.payload.clone()),
                    _ => (String::new(), String::new()),
                };
            let ctx = TaskContext::with_control(
                TaskContextParts {
                    workflow_id: assignment.workflow_id,
                    step: assignment.step.clone(),
                    attempt_id,
                    attempt_number: assignment.attempt_number,
                    task_type,
                    payload,
                    inputs: assignment.inputs.clone(),
                    params: assignment.workflow_input.clone(),
                    env,
                    deadline: timeout.map(|timeout| Instant::now() + timeout),
                },
                control.clone(),
            );
            let timer = timeout.map(|timeout| {
                let control = control.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(timeout) => control.stop(StopReason::Timeout {
                            timeout_ms: timeout.as_millis() as u64,
                        }),
                        _ = control.stopped() => {}
                    }
                })
            });
            let run = std::panic::AssertUnwindSafe(executors.run(task, ctx, &control));
            let result = match run.catch_unwind().await {
                Ok(result) => result,
                Err(_) => TaskResult::failed("the task panicked"),
            };
            if let Some(timer) = timer {
                timer.abort();
            }
            result
        }
    };
    if let Some(reason) = control.reason() {
        // Whatever the task returned after being stopped, it did not finish on its own terms.
        result.success = false;
        result.add_error_line(&format!("baton: {reason}"));
    }
    // No secret leaves the agent: what the step printed or failed with is reported masked.
    if !secrets.is_empty() {
        result.output = mask(&result.output, &secrets);
        result.error = mask(&result.error, &secrets);
    }
    Finished {
        attempt_id,
        result: result.bounded(),
        started_at_ms,
        finished_at_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> Endpoint {
        Endpoint::parse(text).unwrap()
    }

    #[test]
    fn a_named_leader_is_dialled_where_the_dial_map_says() {
        let mut targets = Targets {
            endpoints: Endpoints::parse("127.0.0.1:9001,127.0.0.1:9002").unwrap(),
            next: 0,
            leader: None,
        };
        let dial = HashMap::from([(endpoint("127.0.0.1:7002"), endpoint("127.0.0.1:9002"))]);
        targets.redirect(endpoint("127.0.0.1:7002"), &dial);
        assert_eq!(targets.current(), endpoint("127.0.0.1:9002"));
        // An address the map does not know is dialled as named.
        targets.redirect(endpoint("127.0.0.1:7003"), &dial);
        assert_eq!(targets.current(), endpoint("127.0.0.1:7003"));
        // A failed leader is forgotten: back to the list.
        targets.failed();
        assert_eq!(targets.current(), endpoint("127.0.0.1:9001"));
    }
}
