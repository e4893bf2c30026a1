//! Leader only: the loop that proposes assignments, lease expiries, ticks and purges, the agents'
//! sessions (the outbox per agent), and the lease deadlines kept in leader memory. Each round's
//! decisions are a pure function (`plan`), its placement policy another (`placement`); the loop
//! here only carries them out.
//!
//! Heartbeats renew leases here, not in the log (design rule 3). Expiry goes through the log.
//! A new leader remembers no renewals, so it grants every live lease a full TTL from the moment
//! it wins (rule 4). Everything here is rebuilt from the replicated state; nothing in it needs to
//! survive a crash.

pub use crate::planning::{placement, plan};

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_proto::limits;
use baton_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use crate::config::Lifecycle;
use crate::metrics;
use crate::raft::RaftNode;
use crate::state::outcome::Assigned;
use crate::state::{
    AgentId, Assignment, AttemptId, ClusterState, Command, PURGE_BATCH_MAX, PurgeCommand, StepState,
};

pub use crate::limits::{AGENT_OUTBOX_CAPACITY, ASSIGN_BATCH_MAX};

/// The leader's lease expiry margin (see `baton_proto::limits::LEASE_EXPIRY_MARGIN_MS`).
pub const LEASE_EXPIRY_MARGIN: Duration = Duration::from_millis(limits::LEASE_EXPIRY_MARGIN_MS);
/// How often agents heartbeat (`baton_proto::limits::HEARTBEAT_INTERVAL_MS`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(limits::HEARTBEAT_INTERVAL_MS);
/// An agent silent this long is not offered new steps (`limits::SESSION_SILENCE_MS_MAX`).
pub const SESSION_SILENCE_MAX: Duration = Duration::from_millis(limits::SESSION_SILENCE_MS_MAX);
/// The loop runs at least this often even when nothing wakes it (deadlines, backoff).
const ROUND_INTERVAL: Duration = Duration::from_millis(50);
/// While less than a full purge command is due, purges go out at most this often: a finished
/// workflow outlives its retention by at most about this, and a trickle of purges costs one
/// entry a second rather than one per round. A full command's worth goes out at once.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

pub type Outbox = mpsc::Sender<Result<pb::ServerMessage, Status>>;

struct Session {
    id: u64,
    outbox: Outbox,
    /// When the agent last sent anything. A session can look open long after its agent died
    /// (a half-open TCP connection behind a partition); a silent agent gets no new work.
    last_seen: Instant,
}

/// Connected agents and the lease deadlines, shared by the loop and the session handlers.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<AgentId, Session>>,
    /// Lease deadline and holder of every live attempt this leader knows of.
    leases: Mutex<plan::Leases>,
    /// What each namespace got of the fleet lately (fair scheduling; leader memory).
    shares: Mutex<placement::Shares>,
    next_session_id: AtomicU64,
    /// Wakes the loop: an agent connected or capacity freed.
    pub changed: Notify,
}

impl Sessions {
    /// Registers an agent's session, replacing (and so closing) an older one. Returns its id.
    pub fn open(&self, agent: AgentId, outbox: Outbox) -> u64 {
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.sessions.lock().insert(
            agent,
            Session {
                id,
                outbox,
                last_seen: Instant::now(),
            },
        );
        self.changed.notify_one();
        id
    }

    /// Removes the session if it is still the agent's current one.
    pub fn close(&self, agent: AgentId, session_id: u64) {
        let mut sessions = self.sessions.lock();
        if sessions.get(&agent).is_some_and(|s| s.id == session_id) {
            sessions.remove(&agent);
        }
    }

    /// Agents with an open session that spoke recently.
    pub fn connected(&self) -> BTreeSet<AgentId> {
        let now = Instant::now();
        self.sessions
            .lock()
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) <= SESSION_SILENCE_MAX)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Records that an agent's session is alive.
    pub fn seen(&self, agent: AgentId, session_id: u64) {
        if let Some(session) = self.sessions.lock().get_mut(&agent)
            && session.id == session_id
        {
            session.last_seen = Instant::now();
        }
    }

    /// Queues a message for an agent; false if it is not connected or its outbox is full (the
    /// session is then closed: the agent reconnects and is reconciled).
    pub fn send(&self, agent: AgentId, msg: pb::server_message::Msg) -> bool {
        let mut sessions = self.sessions.lock();
        let Some(session) = sessions.get(&agent) else {
            return false;
        };
        match session
            .outbox
            .try_send(Ok(pb::ServerMessage { msg: Some(msg) }))
        {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(agent = %agent, "agent outbox full or closed: dropping the session");
                sessions.remove(&agent);
                false
            }
        }
    }

    /// Starts a lease for a full TTL from now, before its agent has said it runs the attempt.
    pub fn grant(&self, attempt: AttemptId, agent: AgentId, ttl_ms: u64) {
        self.leases
            .lock()
            .insert(attempt, plan::Lease::new(Instant::now(), ttl_ms, agent));
    }

    /// Renews a lease for a full TTL from now: its agent says it runs the attempt.
    pub fn renew(&self, attempt: AttemptId, agent: AgentId, ttl_ms: u64) {
        self.leases
            .lock()
            .insert(attempt, plan::Lease::renewed(Instant::now(), ttl_ms, agent));
    }

    /// `agent` says what it runs: of `stopped` (its attempts stopped from outside that still
    /// hold their share, from the state: few, usually none), one it had said it ran and no
    /// longer lists gives back what it held at the next round (its lease is made to lapse now).
    pub fn stopped_unless_running(
        &self,
        agent: AgentId,
        running: &[u64],
        stopped: &[AttemptId],
        margin: Duration,
    ) {
        if stopped.is_empty() {
            return;
        }
        let lapsed = Instant::now()
            .checked_sub(margin + Duration::from_millis(1))
            .unwrap_or_else(Instant::now);
        let mut leases = self.leases.lock();
        for id in stopped.iter().filter(|id| !running.contains(&id.0)) {
            if let Some(lease) = leases.get_mut(id)
                && lease.stopped
                && lease.seen
                && lease.agent == agent
            {
                lease.deadline = lapsed;
            }
        }
    }

    fn close_all(&self) {
        self.sessions.lock().clear();
        self.leases.lock().clear();
        *self.shares.lock() = placement::Shares::default();
    }
}

/// The Assignment message for a live attempt, built from the state (also used to re-send it to
/// an agent that reconnects without it).
pub fn assignment_message(state: &ClusterState, attempt: AttemptId) -> Option<pb::Assignment> {
    let live = state.live_attempt(attempt)?;
    let workflow = state.workflow(live.workflow_id)?;
    let step = live.step.get();
    let spec_step = workflow.spec.steps.get(step)?;
    let run = &workflow.steps[step];
    let inputs = run
        .deps
        .iter()
        .map(|&d| {
            (
                workflow.spec.steps[d.get()].name.clone(),
                workflow.steps[d.get()].output.clone(),
            )
        })
        .collect();
    Some(pb::Assignment {
        workflow_id: live.workflow_id.0,
        step: spec_step.name.clone(),
        attempt_id: attempt.0,
        attempt_number: run.attempts,
        spec: Some(spec_step.clone()),
        lease_ttl_ms: live.lease_ttl_ms,
        timeout_ms: spec_step.timeout_ms,
        inputs,
        // Parameters read as input too (their names never clash: `validate_spec`).
        workflow_input: if workflow.params.is_empty() {
            workflow.spec.input.clone()
        } else {
            let mut input = workflow.spec.input.clone();
            input.extend(workflow.params.iter().map(|(k, v)| (k.clone(), v.clone())));
            input
        },
        namespace: match crate::state::namespaces::is_default(&workflow.namespace) {
            true => String::new(),
            false => workflow.namespace.to_string(),
        },
    })
}

/// Runs for the life of the node; acts only while it is the leader.
pub async fn run(node: Arc<RaftNode>, sessions: Arc<Sessions>, lifecycle: Lifecycle) {
    let mut was_leader = false;
    let mut last_purge: Option<Instant> = None;
    let mut gauges = metrics::LeaderGauges::default();
    loop {
        tokio::select! {
            _ = node.replica.applied_notify.notified() => {}
            _ = sessions.changed.notified() => {}
            _ = tokio::time::sleep(ROUND_INTERVAL) => {}
        }
        if !node.is_leader() {
            gauges.clear();
            if was_leader {
                tracing::info!("lost leadership: closing agent sessions");
                sessions.close_all();
                was_leader = false;
            }
            continue;
        }
        let view = node.replica.view();
        if !was_leader {
            // Rule 4: no memory of renewals, so every live lease gets a full TTL from now.
            let grace: Vec<_> = view
                .state
                .live_attempts()
                .map(|(id, a)| (*id, a.agent_id, a.lease_ttl_ms))
                .collect();
            tracing::info!(
                leases = grace.len(),
                "became leader: granting every live lease a full TTL"
            );
            for (attempt, agent, ttl_ms) in grace {
                sessions.grant(attempt, agent, ttl_ms);
            }
            was_leader = true;
        }
        gauges.update(&view.state, &sessions.connected(), Instant::now());
        if let Err(err) = round(&node, &sessions, view.state).await {
            tracing::debug!(error = %err, "scheduling round cut short");
        }
        if let Err(err) = purge(&node, &lifecycle, &mut last_purge).await {
            tracing::debug!(error = %err, "purge cut short");
        }
    }
}

/// Proposes the purge of finished workflows whose retention has passed (and of purge records
/// past the idempotency window): a full command's worth at once, less at most every
/// [`PURGE_INTERVAL`]. The state checks each workflow again at apply, with its own time.
async fn purge(
    node: &RaftNode,
    lifecycle: &Lifecycle,
    last_purge: &mut Option<Instant>,
) -> Result<(), crate::raft::NodeError> {
    let now_ms = node.clock.now_ms().await;
    let due = node.replica.read(|applied| {
        applied.state.purge_due(
            now_ms,
            lifecycle.default_retention_ms,
            lifecycle.idempotency_window_ms,
            PURGE_BATCH_MAX,
        )
    });
    let waited = last_purge.is_none_or(|at| at.elapsed() >= PURGE_INTERVAL);
    if due.is_empty() || (due.workflows.len() < PURGE_BATCH_MAX && !waited) {
        return Ok(());
    }
    *last_purge = Some(Instant::now());
    let command = PurgeCommand {
        workflows: due.workflows,
        default_retention_ms: lifecycle.default_retention_ms,
        idempotency_window_ms: lifecycle.idempotency_window_ms,
    };
    let decided = node.propose_for(command).await?;
    if decided.outcome.workflows > 0 {
        tracing::info!(
            workflows = decided.outcome.workflows,
            records = decided.outcome.records,
            index = decided.index,
            "purged finished workflows past their retention"
        );
    }
    Ok(())
}

/// One pass: decide ([`plan::plan`]), then carry it out: tell agents to stop what no longer
/// holds a lease, propose the lapsed leases' expiry (alone), or a Tick and the assignments, and
/// send each assignment committed to its agent.
///
/// `state` is a point-in-time clone, dropped before the round waits for a proposal: while a clone
/// shares the persistent maps' nodes, every entry applied meanwhile copies each node it touches
/// (a leader profile at 256 clients showed those copies among its top allocations).
async fn round(
    node: &RaftNode,
    sessions: &Sessions,
    state: ClusterState,
) -> Result<(), crate::raft::NodeError> {
    // The leader's stamping clock, not the wall clock: a wall clock that steps must not make
    // every deadline due at once (or none for an hour). See `raft::clock`.
    let now_ms = node.clock.now_ms().await;
    let connected = sessions.connected();
    let plan = plan::plan(
        &state,
        &mut sessions.leases.lock(),
        &connected,
        Instant::now(),
        now_ms,
        plan::Limits {
            expiry_margin: LEASE_EXPIRY_MARGIN,
            batch_max: ASSIGN_BATCH_MAX,
        },
        &mut sessions.shares.lock(),
    );
    for (attempt, agent) in plan.stop {
        // Reported (a stop is a no-op on the agent), or cancelled or expired (the agent must
        // stop now, not at its next heartbeat).
        sessions.send(
            agent,
            pb::server_message::Msg::Stop(pb::StopAttempt {
                attempt_id: attempt.0,
                reason: "the attempt no longer holds a lease".into(),
            }),
        );
    }
    if !plan.expire.is_empty() {
        for attempt in &plan.expire {
            if let Some(live) = state.live_attempt(*attempt) {
                let step = state
                    .workflow(live.workflow_id)
                    .and_then(|w| w.spec.steps.get(live.step.get()))
                    .map_or("", |s| s.name.as_str());
                tracing::warn!(
                    workflow = %live.workflow_id, step, attempt = %attempt, agent = %live.agent_id,
                    "lease not renewed in time: expiring it"
                );
            }
        }
        drop(state);
        // A no-op but in a broken build (faults::Broken::ExpireOffLog).
        crate::faults::expiring_here(plan.expire.iter().map(|a| a.0));
        node.propose(Command::ExpireLeases {
            attempts: plan.expire,
        })
        .await?;
        return Ok(());
    }
    drop(state);
    if plan.tick {
        node.propose(Command::Tick).await?;
    }
    if plan.assign.is_empty() {
        return Ok(());
    }
    dispatch(node, sessions, plan.assign).await
}

/// Proposes `assignments` in one entry and sends each one committed to its agent, starting its
/// lease.
async fn dispatch(
    node: &RaftNode,
    sessions: &Sessions,
    assignments: Vec<Assignment>,
) -> Result<(), crate::raft::NodeError> {
    let batch = assignments.clone();
    metrics::assign_batch(batch.len());
    let proposed = node.propose(Command::Assign { assignments }).await?;
    let Assigned(attempts) = crate::raft::outcome(proposed.response)?;
    // Dispatch from the state as of this entry, so the message matches what was committed. The
    // messages are built under the read lock (short: no I/O), not from a clone (see above).
    let messages: Vec<_> = node.replica.read(|applied| {
        batch
            .iter()
            .zip(attempts)
            .filter_map(|(assignment, attempt)| {
                let attempt = attempt?;
                let message = assignment_message(&applied.state, attempt)?;
                Some((assignment, attempt, message))
            })
            .collect()
    });
    for (assignment, attempt, message) in messages {
        sessions.grant(attempt, assignment.agent_id, message.lease_ttl_ms);
        tracing::info!(
            workflow = %assignment.workflow_id, step = %message.step, attempt = %attempt,
            agent = %assignment.agent_id, "step assigned"
        );
        if !sessions.send(
            assignment.agent_id,
            pb::server_message::Msg::Assignment(message),
        ) {
            // The agent went away: its lease runs out and the step is requeued.
            tracing::warn!(attempt = %attempt, agent = %assignment.agent_id, "assigned agent is gone");
        }
    }
    Ok(())
}

/// Running attempts of `agent` in the state, with their step state checked.
pub fn live_attempts_of(state: &ClusterState, agent: AgentId) -> Vec<AttemptId> {
    state
        .live_attempts()
        .filter(|(_, live)| live.agent_id == agent)
        .filter(|(_, live)| {
            state
                .workflow(live.workflow_id)
                .is_some_and(|w| w.steps[live.step.get()].state == StepState::Running)
        })
        .map(|(id, _)| *id)
        .collect()
}
