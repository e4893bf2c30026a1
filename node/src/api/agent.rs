//! AgentService: one bidirectional stream per agent, served by the leader only. The first message
//! registers (through the log); then heartbeats renew leases in leader memory and are acked with
//! the attempts renewed, and reports are proposed as `Complete` and acked once committed.

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_proto::limits::{
    AGENT_TASK_TYPES_MAX, LABEL_KEY_LEN_MAX, LABEL_VALUE_LEN_MAX, LABELS_MAX, NAME_LEN_MAX,
    OUTPUT_BYTES_MAX,
};
use baton_proto::v1 as pb;
use baton_proto::v1::agent_service_server::AgentService;
use baton_security::server::PeerInfo;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{inbound_error, node_error, observed};
use crate::limits::{AGENT_OUTBOX_CAPACITY, AGENT_SLOTS_MAX};
use crate::limits::{AGENT_SESSIONS_MAX, REGISTER_WAIT_MAX, RUNNING_ATTEMPTS_PER_MESSAGE_MAX};
use crate::metrics;
use crate::raft::RaftNode;
use crate::scheduler::{self, Sessions};
use crate::state::outcome::{Registered, Reported};
use crate::state::scheduling::truncate_utf8;
use crate::state::{AgentId, AttemptId, CompleteCommand, RegisterAgentCommand};

pub struct AgentServiceImpl {
    pub node: Arc<RaftNode>,
    pub sessions: Arc<Sessions>,
}

fn validate_register(r: &pb::Register) -> Result<(), Status> {
    let name_ok = !r.name.is_empty()
        && r.name.len() <= NAME_LEN_MAX
        && r.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(Status::invalid_argument(format!(
            "register.name: {:?} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9._-]",
            r.name
        )));
    }
    if r.slots == 0 || r.slots > AGENT_SLOTS_MAX {
        return Err(Status::invalid_argument(format!(
            "register.slots: {} is not in 1..={AGENT_SLOTS_MAX}",
            r.slots
        )));
    }
    if r.labels.len() > LABELS_MAX {
        return Err(Status::invalid_argument(format!(
            "register.labels: more than {LABELS_MAX}"
        )));
    }
    for (k, v) in &r.labels {
        if k.is_empty() || k.len() > LABEL_KEY_LEN_MAX || v.len() > LABEL_VALUE_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "register.labels: {k:?} is too long or empty"
            )));
        }
    }
    if r.task_types.len() > AGENT_TASK_TYPES_MAX {
        return Err(Status::invalid_argument(format!(
            "register.task_types: {} types, more than {AGENT_TASK_TYPES_MAX}",
            r.task_types.len()
        )));
    }
    if let Some(bad) = r.task_types.iter().find(|t| {
        t.is_empty()
            || t.len() > NAME_LEN_MAX
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    }) {
        return Err(Status::invalid_argument(format!(
            "register.task_types: {bad:?} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9._/-]"
        )));
    }
    check_running("register.running_attempts", &r.running_attempts)
}

/// An agent runs at most its slots: a longer list is a broken or hostile agent.
fn check_running(field: &str, attempts: &[u64]) -> Result<(), Status> {
    if attempts.len() > RUNNING_ATTEMPTS_PER_MESSAGE_MAX {
        return Err(Status::invalid_argument(format!(
            "{field}: {} attempts, more than {RUNNING_ATTEMPTS_PER_MESSAGE_MAX}",
            attempts.len()
        )));
    }
    Ok(())
}

/// Refuses a session (or ends one) on a follower, naming the leader so the agent can go there.
async fn require_leader(node: &RaftNode) -> Result<(), Status> {
    if node.is_leader() {
        return Ok(());
    }
    let mut status =
        Status::failed_precondition("this node is not the leader; connect to the leader");
    if let Some(leader) = node.current_leader().await
        && let Some(addr) = node.member_addr(leader)
        && let Ok(value) = addr.parse()
    {
        status.metadata_mut().insert("baton-leader", value);
    }
    Err(status)
}

type SessionStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

/// Whether an agent whose certificate names `certified` may register as `name`: the name
/// itself, or a member `certified.SUFFIX` of the pool it names. A certificate name with a dot
/// is refused outright: otherwise the certificate `gpu` could register as `gpu.a`, the name the
/// certificate `gpu.a` owns (`batond certs` refuses such names too).
pub fn agent_name_allowed(certified: &str, name: &str) -> bool {
    !certified.contains('.')
        && (name == certified
            || name
                .strip_prefix(certified)
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')))
}

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        observed("Session", self.open_session(request)).await
    }
}

impl AgentServiceImpl {
    /// Registers the agent and starts serving its session.
    async fn open_session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        require_leader(&self.node).await?;
        // Held until the session's task ends.
        let permit = self.node.admission.agent_session().ok_or_else(|| {
            Status::resource_exhausted(format!(
                "this node serves {AGENT_SESSIONS_MAX} agent sessions already"
            ))
        })?;
        // With TLS on, the certificate names the agent (`spiffe://baton/agent/NAME`): it may
        // register as NAME, or as `NAME.anything` (a pool of agents sharing one certificate, which
        // can tell its members apart no better than the key they share). The name keys the
        // agent's leases, so an agent registered under another's name could renew, report or
        // cancel that agent's attempts.
        let certified_name = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|info| info.identity.as_ref())
            .map(|identity| identity.name.clone());
        let token_id = crate::security::authorized_token_id(&request);
        let mut inbound = request.into_inner();
        // A session that never registers must not hold its slot.
        let first = tokio::time::timeout(REGISTER_WAIT_MAX, inbound.next())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no register message within {REGISTER_WAIT_MAX:?} of opening the session"
                ))
            })?;
        let register = match first {
            Some(Ok(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Register(r)),
            })) => r,
            Some(Ok(_)) => {
                return Err(Status::failed_precondition(
                    "the first message of a session must be register: heartbeats and reports come from registered agents only",
                ));
            }
            Some(Err(status)) => return Err(inbound_error(status)),
            None => return Err(Status::invalid_argument("empty session")),
        };
        validate_register(&register)?;
        if let Some(certified) = certified_name
            && !agent_name_allowed(&certified, &register.name)
        {
            return Err(Status::permission_denied(format!(
                "register.name: {:?} is not the name in this agent's certificate",
                register.name
            )));
        }
        let proposed = self
            .node
            .propose_client_for(RegisterAgentCommand {
                name: register.name.clone(),
                labels: register.labels.clone(),
                slots: register.slots,
                cpu_millis: register.cpu_millis,
                memory_mb: register.memory_mb,
                task_types: register.task_types.clone(),
            })
            .await
            .map_err(node_error)?;
        let Registered(agent_id) = proposed.outcome;

        // Reconcile: attach what the agent still runs and the cluster still leases to it; re-send
        // what it should run but does not know of (lost in transit, or a leader change).
        let view = self.node.replica.view();
        let leased: BTreeSet<AttemptId> = scheduler::live_attempts_of(&view.state, agent_id)
            .into_iter()
            .collect();
        let running: BTreeSet<AttemptId> = register
            .running_attempts
            .iter()
            .map(|&a| AttemptId(a))
            .collect();
        let attached: Vec<u64> = leased.intersection(&running).map(|a| a.0).collect();
        let (tx, rx) = mpsc::channel(AGENT_OUTBOX_CAPACITY);
        let registered = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Registered(pb::Registered {
                agent_id: agent_id.0,
                heartbeat_interval_ms: scheduler::HEARTBEAT_INTERVAL.as_millis() as u64,
                attached_attempts: attached.clone(),
            })),
        };
        tx.try_send(Ok(registered)).expect("fresh outbox has room");
        for attempt in leased.difference(&running) {
            if let Some(message) = scheduler::assignment_message(&view.state, *attempt) {
                let _ = tx.try_send(Ok(pb::ServerMessage {
                    msg: Some(pb::server_message::Msg::Assignment(message)),
                }));
            }
        }
        for &attempt in &attached {
            if let Some(live) = view.state.live_attempt(AttemptId(attempt)) {
                self.sessions
                    .renew(AttemptId(attempt), agent_id, live.lease_ttl_ms);
            }
        }
        let session_id = self.sessions.open(agent_id, tx.clone());
        tracing::info!(
            agent = %register.name, agent_id = %agent_id, slots = register.slots,
            attached = attached.len(), "agent connected"
        );

        let node = self.node.clone();
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Leases live on the leader: once this node stops leading (deposed, or stopping),
            // send the agent to the new leader rather than renew here what nobody enforces.
            let lost = node.leadership_lost();
            tokio::pin!(lost);
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = &mut lost => {
                        tracing::info!(agent_id = %agent_id, "no longer the leader: ending the agent's session");
                        // Leadership moves in an election or so (a transfer, a newer term):
                        // wait that long for the next leader, so the redirect names it and the
                        // agent goes straight there instead of trying nodes in turn.
                        let _ = node
                            .status_watch()
                            .wait(node.takeover_timeout(), |s| {
                                s.leader.is_some_and(|l| l != node.id)
                            })
                            .await;
                        let status = require_leader(&node).await.err().unwrap_or_else(|| {
                            Status::unavailable("this node stopped leading")
                        });
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let msg = match message {
                    Some(Ok(pb::AgentMessage { msg: Some(msg) })) => msg,
                    // An oversized or undecodable message: say why, then end the session.
                    Some(Err(status)) => {
                        let _ = tx.send(Err(inbound_error(status))).await;
                        break;
                    }
                    Some(Ok(pb::AgentMessage { msg: None })) | None => break,
                };
                // A revoked token ends the session at the agent's next message (heartbeats come
                // every few seconds); its leases then run out as for any lost agent.
                if token_id
                    .as_deref()
                    .is_some_and(|id| !crate::security::token_live(&node.replica, id))
                {
                    tracing::info!(agent_id = %agent_id, "the agent's token was revoked: ending its session");
                    let _ = tx
                        .send(Err(Status::unauthenticated("unauthenticated")))
                        .await;
                    break;
                }
                sessions.seen(agent_id, session_id);
                match msg {
                    pb::agent_message::Msg::Heartbeat(hb) => {
                        if let Err(status) =
                            check_running("heartbeat.running_attempts", &hb.running_attempts)
                        {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                        let renewed = renew(&node, &sessions, agent_id, &hb.running_attempts);
                        // A leader that a quorum has not acknowledged lately may already be
                        // deposed without knowing: it keeps its own books but promises the agent
                        // nothing (a node that knows it no longer leads answers false too, and
                        // `lost` ends the session on the next turn of the loop). The agent's leases then run out on its side first, and it
                        // gives up this session when acks stay away (see the agent runtime).
                        if !node.leadership_confirmed() {
                            tracing::debug!(agent_id = %agent_id, seq = hb.seq, "leadership unconfirmed: heartbeat not acknowledged");
                            continue;
                        }
                        let ack = pb::server_message::Msg::HeartbeatAck(pb::HeartbeatAck {
                            seq: hb.seq,
                            renewed_attempts: renewed,
                        });
                        if tx
                            .send(Ok(pb::ServerMessage { msg: Some(ack) }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    pb::agent_message::Msg::Report(report) => {
                        // Reports are proposed concurrently; each is acked once committed.
                        let node = node.clone();
                        let tx = tx.clone();
                        let sessions = sessions.clone();
                        tokio::spawn(async move {
                            match complete(&node, agent_id, report).await {
                                Ok(Some(reply)) => {
                                    sessions.changed.notify_one();
                                    let _ =
                                        tx.send(Ok(pb::ServerMessage { msg: Some(reply) })).await;
                                }
                                Ok(None) => {}
                                // This node can no longer commit (lost leadership, stopping):
                                // end the session so the agent takes its report to the leader.
                                Err(status) => {
                                    let _ = tx.send(Err(status)).await;
                                }
                            }
                        });
                    }
                    pb::agent_message::Msg::Register(_) => {
                        let _ = tx
                            .send(Err(Status::failed_precondition(
                                "already registered on this session",
                            )))
                            .await;
                        break;
                    }
                }
            }
            sessions.close(agent_id, session_id);
            tracing::info!(agent_id = %agent_id, "agent disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Renews the leases an agent holds; returns the attempts renewed.
fn renew(node: &RaftNode, sessions: &Sessions, agent: AgentId, running: &[u64]) -> Vec<u64> {
    node.replica.read(|applied| {
        running
            .iter()
            .filter_map(|&a| {
                let live = applied.state.live_attempt(AttemptId(a))?;
                (live.agent_id == agent).then(|| {
                    sessions.renew(AttemptId(a), agent, live.lease_ttl_ms);
                    a
                })
            })
            .collect()
    })
}

/// Proposes a report; the reply to send, None when the outcome is unknown (the agent keeps the
/// report and re-sends it on its next session), or the status to end the session with.
async fn complete(
    node: &RaftNode,
    agent: AgentId,
    report: pb::Report,
) -> Result<Option<pb::server_message::Msg>, Status> {
    let attempt_id = report.attempt_id;
    // Refused without a log entry when the applied state already proves the report stale or
    // foreign (the state machine re-checks identity and token at apply either way): another
    // agent's attempt cannot even cost the cluster a log entry.
    let refusal = node
        .replica
        .read(|a| a.state.report_refusal(AttemptId(attempt_id), agent));
    if let Some(reason) = refusal {
        metrics::report_refused();
        tracing::warn!(attempt = attempt_id, agent = %agent, %reason, "report refused before proposing");
        return Ok(Some(pb::server_message::Msg::Rejected(
            pb::ReportRejected { attempt_id, reason },
        )));
    }
    // For the logs: which workflow and step the report is about, if the attempt is still live.
    let (workflow, step) = node.replica.read(|a| {
        let Some(live) = a.state.live_attempt(AttemptId(attempt_id)) else {
            return (0, String::new());
        };
        let step = a
            .state
            .workflow(live.workflow_id)
            .and_then(|w| w.spec.steps.get(live.step as usize))
            .map_or_else(String::new, |s| s.name.clone());
        (live.workflow_id.0, step)
    });
    let report_command = CompleteCommand {
        attempt_id: AttemptId(attempt_id),
        agent_id: agent,
        success: report.success,
        // Kept to the tail the state keeps anyway, so that a large output does not travel
        // through the log only to be cut at apply.
        output: truncate_utf8(report.output, OUTPUT_BYTES_MAX),
        error: truncate_utf8(report.error, OUTPUT_BYTES_MAX),
        exit_code: report.exit_code,
    };
    // Not counted against `PROPOSALS_IN_FLIGHT_MAX`: a report ends work and frees capacity, so
    // refusing it under load would only make the load last longer. Reports in flight are
    // bounded anyway, by sessions times slots.
    match node.propose_for(report_command).await {
        Ok(decided) => match decided.outcome {
            Reported::Accepted => {
                tracing::info!(workflow, step, attempt = attempt_id, agent = %agent, success = report.success, "report accepted");
                Ok(Some(pb::server_message::Msg::ReportAccepted(
                    pb::ReportAccepted { attempt_id },
                )))
            }
            Reported::Refused(reason) => {
                metrics::report_refused();
                tracing::warn!(workflow, step, attempt = attempt_id, agent = %agent, %reason, "stale report refused");
                Ok(Some(pb::server_message::Msg::Rejected(
                    pb::ReportRejected { attempt_id, reason },
                )))
            }
        },
        // Unknown too ends the session (found by baton-chaos seed 1): kept open, the agent would
        // hold the report unacknowledged until its next Register, which never came, and the step
        // stayed RUNNING for good. Re-sent after re-registering, a report that did commit is
        // refused as stale and dropped by the agent, so ending the session is always safe.
        Err(err) => {
            tracing::warn!(attempt = attempt_id, error = %err, "report not committed; closing the session");
            Err(node_error(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::agent_name_allowed;

    #[test]
    fn a_certificate_allows_its_name_and_its_pool_only() {
        assert!(agent_name_allowed("gpu", "gpu"));
        assert!(agent_name_allowed("gpu", "gpu.pod-7f9c"));
        assert!(!agent_name_allowed("gpu", "gpu."));
        assert!(!agent_name_allowed("gpu", "gpu2"));
        assert!(!agent_name_allowed("gpu", "gpu-b"));
        assert!(!agent_name_allowed("gpu", "cpu"));
        assert!(!agent_name_allowed("gpu.a", "gpu"));
        // A dotted certificate name would overlap another certificate's pool.
        assert!(!agent_name_allowed("gpu.a", "gpu.a"));
    }
}
