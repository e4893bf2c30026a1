//! A scripted agent speaking the real AgentService protocol, for scheduler tests: it registers,
//! heartbeats, runs each assignment by a rule the test gives (succeed, fail, hold), records every
//! execution, and can die abruptly (stop heartbeating and drop its stream) like a killed process.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::channel;

/// What the agent does with an assignment of a given step name.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    Succeed,
    /// Fail the first n attempts of the step, then succeed.
    FailFirst(u32),
    /// Run for this long, then succeed.
    Take(Duration),
    /// Never finish (until stopped).
    Hold,
}

#[derive(Clone, Debug)]
pub struct Execution {
    pub workflow_id: u64,
    pub step: String,
    pub attempt_id: u64,
    pub started: std::time::Instant,
    pub finished: Option<std::time::Instant>,
    pub inputs: BTreeMap<String, String>,
}

#[derive(Default)]
pub struct Journal {
    /// Cleared by `kill`: every task of the agent goes silent.
    pub dead: bool,
    /// Every task the agent spawned, aborted by `kill`.
    pub tasks: Vec<tokio::task::AbortHandle>,
    pub executions: Vec<Execution>,
    pub running_max: usize,
    pub stopped: BTreeSet<u64>,
    pub accepted: BTreeSet<u64>,
    pub rejected: BTreeSet<u64>,
    pub running: BTreeSet<u64>,
    pub failures_by_step: BTreeMap<String, u32>,
}

pub struct TestAgent {
    pub name: String,
    pub journal: Arc<Mutex<Journal>>,
    task: JoinHandle<()>,
}

impl TestAgent {
    /// A copy of every execution so far, so that no caller holds the journal's lock.
    pub fn executions(&self) -> Vec<Execution> {
        self.journal.lock().executions.clone()
    }

    /// Connects to whichever of `endpoints` is the leader (following `baton-leader` hints), and
    /// keeps reconnecting, re-attaching its running attempts, until killed.
    pub fn start(
        name: &str,
        slots: u32,
        endpoints: Vec<SocketAddr>,
        behavior: impl Fn(&str) -> Behavior + Send + Sync + 'static,
    ) -> Self {
        let journal: Arc<Mutex<Journal>> = Arc::default();
        let task = tokio::spawn(run(
            name.to_owned(),
            slots,
            endpoints,
            Arc::new(behavior),
            journal.clone(),
        ));
        Self {
            name: name.into(),
            journal,
            task,
        }
    }

    /// Dies like a SIGKILLed process: no more heartbeats, no reports, stream gone.
    pub fn kill(&self) {
        let mut journal = self.journal.lock();
        journal.dead = true;
        for task in journal.tasks.drain(..) {
            task.abort();
        }
        self.task.abort();
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Behave = Arc<dyn Fn(&str) -> Behavior + Send + Sync>;
type Outbox = Arc<Mutex<Option<mpsc::Sender<pb::AgentMessage>>>>;

async fn run(
    name: String,
    slots: u32,
    endpoints: Vec<SocketAddr>,
    behave: Behave,
    journal: Arc<Mutex<Journal>>,
) {
    let mut next = 0;
    let mut hint: Option<SocketAddr> = None;
    // Reports not yet acknowledged, re-sent on every new session.
    let pending: Arc<Mutex<BTreeMap<u64, pb::Report>>> = Arc::default();
    // The current session's outbox: a step that outlives its session reports on the next one.
    let outbox: Outbox = Arc::default();
    loop {
        let addr = hint.take().unwrap_or_else(|| {
            next = (next + 1) % endpoints.len();
            endpoints[next]
        });
        if let Err(leader) = session(&name, slots, addr, &behave, &journal, &pending, &outbox).await
        {
            hint = leader;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One session; returns the leader hint when refused by a follower.
async fn session(
    name: &str,
    slots: u32,
    addr: SocketAddr,
    behave: &Behave,
    journal: &Arc<Mutex<Journal>>,
    pending: &Arc<Mutex<BTreeMap<u64, pb::Report>>>,
    outbox: &Outbox,
) -> Result<(), Option<SocketAddr>> {
    let (out_tx, out_rx) = mpsc::channel::<pb::AgentMessage>(1024);
    let running: Vec<u64> = journal.lock().running.iter().copied().collect();
    out_tx
        .send(msg(pb::agent_message::Msg::Register(pb::Register {
            name: name.into(),
            slots,
            cpu_millis: 1000,
            memory_mb: 1000,
            running_attempts: running,
            ..Default::default()
        })))
        .await
        .unwrap();
    let mut client = AgentServiceClient::new(channel(addr));
    let response = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|status| {
            status
                .metadata()
                .get("baton-leader")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })?;
    let mut inbound = response.into_inner();
    *outbox.lock() = Some(out_tx.clone());
    let heartbeat = {
        let out_tx = out_tx.clone();
        let journal = journal.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                seq += 1;
                if journal.lock().dead {
                    return;
                }
                let running: Vec<u64> = journal.lock().running.iter().copied().collect();
                let hb = pb::Heartbeat {
                    running_attempts: running,
                    seq,
                };
                if out_tx
                    .send(msg(pb::agent_message::Msg::Heartbeat(hb)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    journal.lock().tasks.push(heartbeat.abort_handle());
    while let Ok(Some(message)) = inbound.message().await {
        let Some(message) = message.msg else { continue };
        match message {
            pb::server_message::Msg::Registered(registered) => {
                let attached: BTreeSet<u64> = registered.attached_attempts.into_iter().collect();
                journal.lock().running.retain(|a| attached.contains(a));
                for report in pending.lock().values() {
                    let _ = out_tx.try_send(msg(pb::agent_message::Msg::Report(report.clone())));
                }
            }
            pb::server_message::Msg::Assignment(a) => {
                // Like the real agent: an assignment re-sent on reconnect for an attempt already
                // run (its report not yet acknowledged) or still running is not run again.
                if pending.lock().contains_key(&a.attempt_id)
                    || journal.lock().running.contains(&a.attempt_id)
                {
                    continue;
                }
                let behavior = behave(&a.step);
                {
                    let mut j = journal.lock();
                    j.running.insert(a.attempt_id);
                    j.running_max = j.running_max.max(j.running.len());
                    j.executions.push(Execution {
                        workflow_id: a.workflow_id,
                        step: a.step.clone(),
                        attempt_id: a.attempt_id,
                        started: std::time::Instant::now(),
                        finished: None,
                        inputs: a.inputs.clone(),
                    });
                }
                let outbox = outbox.clone();
                let journal = journal.clone();
                let pending = pending.clone();
                let worker_journal = journal.clone();
                let worker = tokio::spawn(async move {
                    let success = match behavior {
                        Behavior::Succeed => true,
                        Behavior::Take(d) => {
                            tokio::time::sleep(d).await;
                            true
                        }
                        Behavior::Hold => std::future::pending().await,
                        Behavior::FailFirst(n) => {
                            let mut j = journal.lock();
                            let failures = j.failures_by_step.entry(a.step.clone()).or_default();
                            *failures += 1;
                            *failures > n
                        }
                    };
                    let report = pb::Report {
                        attempt_id: a.attempt_id,
                        success,
                        output: format!("{}#{}", a.step, a.attempt_id),
                        error: if success {
                            String::new()
                        } else {
                            "scripted failure".into()
                        },
                        exit_code: Some(if success { 0 } else { 1 }),
                        ..Default::default()
                    };
                    {
                        let mut j = journal.lock();
                        j.running.remove(&a.attempt_id);
                        if let Some(e) = j
                            .executions
                            .iter_mut()
                            .rev()
                            .find(|e| e.attempt_id == a.attempt_id)
                        {
                            e.finished = Some(std::time::Instant::now());
                        }
                    }
                    if journal.lock().dead {
                        return;
                    }
                    pending.lock().insert(a.attempt_id, report.clone());
                    // Whichever session is current now; with none, the next one re-sends it.
                    let out_tx = outbox.lock().clone();
                    if let Some(out_tx) = out_tx {
                        let _ = out_tx
                            .send(msg(pb::agent_message::Msg::Report(report)))
                            .await;
                    }
                });
                worker_journal.lock().tasks.push(worker.abort_handle());
            }
            pb::server_message::Msg::Stop(stop) => {
                let mut j = journal.lock();
                if j.running.remove(&stop.attempt_id) {
                    j.stopped.insert(stop.attempt_id);
                }
            }
            pb::server_message::Msg::ReportAccepted(r) => {
                pending.lock().remove(&r.attempt_id);
                journal.lock().accepted.insert(r.attempt_id);
            }
            pb::server_message::Msg::Rejected(r) => {
                pending.lock().remove(&r.attempt_id);
                journal.lock().rejected.insert(r.attempt_id);
            }
            pb::server_message::Msg::HeartbeatAck(_) => {}
        }
    }
    // Running work survives a lost session (it is re-attached on the next one), like a real
    // agent within its lease; only the heartbeat of this session stops.
    heartbeat.abort();
    Ok(())
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}
