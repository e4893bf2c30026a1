//! One registered agent's session on the leader: heartbeats renew its leases (in leader memory)
//! and are acknowledged while leadership is confirmed, reports are proposed concurrently and
//! answered once committed, and the session ends with a redirect as soon as this node stops
//! leading, or at once when the agent's token is revoked.

use std::sync::Arc;

use baton_proto::v1 as pb;
use futures::StreamExt;
use tonic::{Status, Streaming};

use super::register::check_running;
use super::report::complete;
use crate::api::inbound_error;
use crate::raft::RaftNode;
use crate::scheduler::{Outbox, Sessions};
use crate::state::{AgentId, AttemptId};

/// A registered agent's session, served by [`Session::serve`] until it ends.
pub(super) struct Session {
    pub node: Arc<RaftNode>,
    pub sessions: Arc<Sessions>,
    pub agent_id: AgentId,
    pub session_id: u64,
    /// The bearer token the session was opened with, if any: its revocation ends the session.
    pub token_id: Option<String>,
    pub tx: Outbox,
}

impl Session {
    /// Serves the agent's messages until the session ends; `permit` (its place among the
    /// node's agent sessions) is held until then.
    pub async fn serve(self, mut inbound: Streaming<pb::AgentMessage>, permit: impl Send) {
        let _permit = permit;
        // Leases live on the leader: once this node stops leading (deposed, or stopping),
        // send the agent to the new leader rather than renew here what nobody enforces.
        let lost = self.node.leadership_lost();
        tokio::pin!(lost);
        loop {
            let message = tokio::select! {
                message = inbound.next() => message,
                () = &mut lost => {
                    self.end_on_leadership_loss().await;
                    break;
                }
            };
            let msg = match message {
                Some(Ok(pb::AgentMessage { msg: Some(msg) })) => msg,
                // An oversized or undecodable message: say why, then end the session.
                Some(Err(status)) => {
                    let _ = self.tx.send(Err(inbound_error(status))).await;
                    break;
                }
                Some(Ok(pb::AgentMessage { msg: None })) | None => break,
            };
            if self.token_revoked() {
                tracing::info!(agent_id = %self.agent_id, "the agent's token was revoked: ending its session");
                let _ = self
                    .tx
                    .send(Err(Status::unauthenticated("unauthenticated")))
                    .await;
                break;
            }
            self.sessions.seen(self.agent_id, self.session_id);
            let go_on = match msg {
                pb::agent_message::Msg::Heartbeat(heartbeat) => self.heartbeat(heartbeat).await,
                pb::agent_message::Msg::Report(report) => {
                    self.report(report);
                    true
                }
                pb::agent_message::Msg::Register(_) => {
                    let _ = self
                        .tx
                        .send(Err(Status::failed_precondition(
                            "already registered on this session",
                        )))
                        .await;
                    false
                }
            };
            if !go_on {
                break;
            }
        }
        self.sessions.close(self.agent_id, self.session_id);
        tracing::info!(agent_id = %self.agent_id, "agent disconnected");
    }

    /// Ends the session of a node that stopped leading with the redirect to the next leader.
    async fn end_on_leadership_loss(&self) {
        let node = &self.node;
        tracing::info!(agent_id = %self.agent_id, "no longer the leader: ending the agent's session");
        // Leadership moves in an election or so (a transfer, a newer term): wait that long for
        // the next leader, so the redirect names it and the agent goes straight there instead of
        // trying nodes in turn.
        let _ = node
            .status_watch()
            .wait(node.takeover_timeout(), |s| {
                s.leader.is_some_and(|l| l != node.id)
            })
            .await;
        let status = require_leader(node)
            .await
            .err()
            .unwrap_or_else(|| Status::unavailable("this node stopped leading"));
        let _ = self.tx.send(Err(status)).await;
    }

    /// A revoked token ends the session at the agent's next message (heartbeats come every few
    /// seconds); its leases then run out as for any lost agent.
    fn token_revoked(&self) -> bool {
        self.token_id
            .as_deref()
            .is_some_and(|id| !crate::security::token_live(&self.node.replica, id))
    }

    /// Renews the leases a heartbeat lists and acknowledges it; false to end the session.
    async fn heartbeat(&self, heartbeat: pb::Heartbeat) -> bool {
        if let Err(status) =
            check_running("heartbeat.running_attempts", &heartbeat.running_attempts)
        {
            let _ = self.tx.send(Err(status)).await;
            return false;
        }
        let stopped: Vec<AttemptId> = self.node.replica.read(|applied| {
            applied
                .state
                .drains()
                .filter(|drain| drain.agent_id == self.agent_id)
                .map(|drain| drain.attempt_id)
                .collect()
        });
        self.sessions.stopped_unless_running(
            self.agent_id,
            &heartbeat.running_attempts,
            &stopped,
            crate::scheduler::LEASE_EXPIRY_MARGIN,
        );
        let renewed = renew(
            &self.node,
            &self.sessions,
            self.agent_id,
            &heartbeat.running_attempts,
        );
        // A leader that a quorum has not acknowledged lately may already be deposed without
        // knowing: it keeps its own books but promises the agent nothing (a node that knows it
        // no longer leads answers false too, and `lost` ends the session on the next turn of the
        // loop). The agent's leases then run out on its side first, and it gives up this session
        // when acks stay away (see the agent runtime).
        if !self.node.leadership_confirmed()
            && !crate::faults::active(crate::faults::Broken::LeaseWithoutQuorum)
        {
            tracing::debug!(agent_id = %self.agent_id, seq = heartbeat.seq, "leadership unconfirmed: heartbeat not acknowledged");
            return true;
        }
        let ack = pb::server_message::Msg::HeartbeatAck(pb::HeartbeatAck {
            seq: heartbeat.seq,
            renewed_attempts: renewed,
        });
        self.tx
            .send(Ok(pb::ServerMessage { msg: Some(ack) }))
            .await
            .is_ok()
    }

    /// Proposes a report in a task of its own (reports are proposed concurrently); each is
    /// answered once committed.
    fn report(&self, report: pb::Report) {
        let node = self.node.clone();
        let tx = self.tx.clone();
        let sessions = self.sessions.clone();
        let agent_id = self.agent_id;
        tokio::spawn(async move {
            match complete(&node, agent_id, report).await {
                Ok(Some(reply)) => {
                    sessions.changed.notify_one();
                    let _ = tx.send(Ok(pb::ServerMessage { msg: Some(reply) })).await;
                }
                Ok(None) => {}
                // This node can no longer commit (lost leadership, stopping): end the session so
                // the agent takes its report to the leader.
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
    }
}

/// Refuses a session (or ends one) on a follower, naming the leader so the agent can go there.
pub(super) async fn require_leader(node: &RaftNode) -> Result<(), Status> {
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
