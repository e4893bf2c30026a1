//! AgentService: one bidirectional stream per agent, served by the leader only. The first message
//! registers (through the log); then heartbeats renew leases in leader memory and are acked with
//! the attempts renewed, and reports are proposed as `Complete` and acked once committed.
//! `register` checks the first message, `session` serves the rest, `report` proposes reports.

mod register;
mod report;
mod session;

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_proto::v1 as pb;
use baton_proto::v1::agent_service_server::AgentService;
use baton_security::server::PeerInfo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{node_error, observed};
use crate::limits::{AGENT_OUTBOX_CAPACITY, AGENT_SESSIONS_MAX};
use crate::raft::RaftNode;
use crate::scheduler::{self, Sessions};
use crate::state::outcome::Registered;
use crate::state::{AttemptId, RegisterAgentCommand};

pub use register::agent_name_allowed;

pub struct AgentServiceImpl {
    pub node: Arc<RaftNode>,
    pub sessions: Arc<Sessions>,
}

type SessionStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

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
        session::require_leader(&self.node).await?;
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
        let register = register::first_register(&mut inbound).await?;
        register::validate_register(&register)?;
        if let Some(certified) = certified_name
            && !register::agent_name_allowed(&certified, &register.name)
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
                namespaces: register.namespaces.clone(),
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
                // Its lease starts again now: the agent starts its own when the assignment
                // arrives, so the leader's must not end before the agent's would (the chaos
                // suite's "no step runs past its lease's expiry").
                if let Some(live) = view.state.live_attempt(*attempt) {
                    self.sessions.grant(*attempt, agent_id, live.lease_ttl_ms);
                }
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

        tokio::spawn(
            session::Session {
                node: self.node.clone(),
                sessions: self.sessions.clone(),
                agent_id,
                session_id,
                token_id,
                tx,
            }
            .serve(inbound, permit),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
