//! One scheduling round's decisions, as a pure function of the state, the leader's lease book,
//! the connected agents and the time: which leases lapsed, which agents must stop attempts that
//! no longer hold a lease, whether time-driven work is due, and what to assign. The loop in
//! `mod.rs` carries them out (proposals, messages); nothing here does I/O or reads a clock.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::placement;
use crate::state::{AgentId, Assignment, AttemptId, ClusterState};

/// The leader's lease book: every live attempt's deadline and holder (leader memory, design
/// rule 3: heartbeats renew here, expiry goes through the log).
pub type Leases = HashMap<AttemptId, Lease>;

/// One lease in the leader's book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// When it lapses, unless renewed (the expiry margin comes on top).
    pub deadline: Instant,
    /// The agent that holds it.
    pub agent: AgentId,
    /// The attempt was stopped from outside (a cancel, a timeout) and its agent told so: the
    /// lease runs on until its agent shows it stopped or it lapses, since what the attempt held
    /// stays taken until then (`state::keys`, drains).
    pub stopped: bool,
    /// The agent said it runs the attempt (a heartbeat renewed it): a later heartbeat without it
    /// shows it no longer does (one stream, in order). Until then its absence proves nothing:
    /// the assignment may still be on its way.
    pub seen: bool,
}

impl Lease {
    /// A lease for `ttl_ms` from `now`.
    pub fn new(now: Instant, ttl_ms: u64, agent: AgentId) -> Lease {
        Lease {
            deadline: now + Duration::from_millis(ttl_ms),
            agent,
            stopped: false,
            seen: false,
        }
    }

    /// A lease its agent renewed: it runs the attempt.
    pub fn renewed(now: Instant, ttl_ms: u64, agent: AgentId) -> Lease {
        Lease {
            seen: true,
            ..Lease::new(now, ttl_ms, agent)
        }
    }
}

/// What one round decided.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Attempts that no longer hold a lease (reported, cancelled, expired): their agents are told
    /// to stop now rather than at their next heartbeat.
    pub stop: Vec<(AttemptId, AgentId)>,
    /// Leases past their deadline and the margin. When any lapsed, the round proposes only their
    /// expiry: the steps they free are placed by the next round, from the state after it.
    pub expire: Vec<AttemptId>,
    /// A retry's backoff ended or a schedule-to-start deadline passed: propose `Tick`.
    pub tick: bool,
    /// Ready steps to lease out, at most `batch_max`.
    pub assign: Vec<Assignment>,
}

/// A round's fixed settings: the margin past a lease's deadline before it lapses, and the
/// most steps one round assigns.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub expiry_margin: Duration,
    pub batch_max: usize,
}

/// Decides one round. `leases` is brought up to date with the state: attempts that ended are
/// forgotten (and listed in [`Plan::stop`]), live ones without a deadline (assigned by a
/// predecessor, not renewed here yet) are adopted with a full TTL from `now`. A lease lapses once
/// `now` is past its deadline plus `expiry_margin`. `now_ms` is the leader's stamping clock (state
/// time), which backoffs and schedule-to-start deadlines are compared with.
pub fn plan(
    state: &ClusterState,
    leases: &mut Leases,
    connected: &BTreeSet<AgentId>,
    now: Instant,
    now_ms: u64,
    limits: Limits,
    shares: &mut placement::Shares,
) -> Plan {
    let Limits {
        expiry_margin,
        batch_max,
    } = limits;
    let mut plan = Plan::default();
    // An attempt that ended leaves the book, its agent told to stop it; one stopped from
    // outside stays, its lease running until the agent shows it stopped or it lapses.
    leases.retain(|id, lease| {
        if state.live_attempt(*id).is_some() {
            return true;
        }
        if !lease.stopped {
            plan.stop.push((*id, lease.agent));
            lease.stopped = true;
        }
        state.is_drained(*id)
    });
    plan.stop.sort_unstable();
    for (id, live) in state.live_attempts() {
        leases
            .entry(*id)
            .or_insert_with(|| Lease::new(now, live.lease_ttl_ms, live.agent_id));
    }
    // A new leader does not know whether its predecessor told the agent: it tells it (next
    // round) and grants the full TTL, as for a live lease.
    for drain in state.drains() {
        leases
            .entry(drain.attempt_id)
            .or_insert_with(|| Lease::new(now, drain.lease_ttl_ms, drain.agent_id));
    }
    plan.expire = leases
        .iter()
        .filter(|(_, lease)| now > lease.deadline + expiry_margin)
        .map(|(id, _)| *id)
        .collect();
    plan.expire.sort_unstable();
    if !plan.expire.is_empty() {
        return plan;
    }
    // Both O(log n): the state indexes backoffs and schedule-to-start deadlines. Placement reads
    // the state from before the Tick: a Tick only fails or requeues steps.
    plan.tick = state.tick_due(now_ms);
    plan.assign = placement::place_at(state, connected, batch_max, shares, now_ms);
    plan
}

#[cfg(test)]
mod tests {
    use baton_proto::v1 as pb;
    use prost::Message;

    use super::*;
    use crate::state::{
        ApplyCtx, Command, CompleteCommand, LogEntry, RegisterAgentCommand, Response, StepIndex,
        SubmitCommand, WorkflowId,
    };

    const MARGIN: Duration = Duration::from_millis(1_000);

    struct World {
        state: ClusterState,
        index: u64,
    }

    impl World {
        fn new() -> Self {
            Self {
                state: ClusterState::default(),
                index: 0,
            }
        }

        fn apply_at(&mut self, time_ms: u64, command: Command) -> Response {
            self.index += 1;
            self.state
                .apply(
                    ApplyCtx { index: self.index },
                    LogEntry { time_ms, command },
                )
                .response
        }

        fn agent(&mut self, name: &str) -> AgentId {
            match self.apply_at(
                1,
                Command::RegisterAgent(RegisterAgentCommand {
                    namespaces: Default::default(),
                    name: name.into(),
                    labels: Default::default(),
                    slots: 4,
                    cpu_millis: 4000,
                    memory_mb: 4096,
                    task_types: Vec::new(),
                }),
            ) {
                Response::AgentRegistered { agent_id } => agent_id,
                other => panic!("{other:?}"),
            }
        }

        /// Submits a one-step workflow; `retry` gives it three attempts 10 s apart.
        fn submit(&mut self, name: &str, retry: bool) -> WorkflowId {
            let step = pb::StepSpec {
                name: "s".into(),
                task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
                lease_ttl_ms: 2_000,
                retry: retry.then(|| pb::RetryPolicy {
                    max_attempts: 3,
                    backoff: Some(pb::Backoff {
                        initial_ms: 10_000,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            };
            let spec = pb::WorkflowSpec {
                name: name.into(),
                steps: vec![step],
                ..Default::default()
            };
            match self.apply_at(
                1_000,
                Command::Submit(SubmitCommand {
                    actor: String::new(),
                    namespace: Default::default(),
                    spec: spec.encode_to_vec(),
                    idempotency_key: String::new(),
                    params: Default::default(),
                    template: None,
                }),
            ) {
                Response::Submitted { workflow_id, .. } => workflow_id,
                other => panic!("{other:?}"),
            }
        }

        fn assign(&mut self, workflow_id: WorkflowId, agent_id: AgentId) -> AttemptId {
            match self.apply_at(
                1_000,
                Command::Assign {
                    assignments: vec![Assignment {
                        workflow_id,
                        step: StepIndex(0),
                        agent_id,
                    }],
                },
            ) {
                Response::Assigned { attempts } => attempts[0].expect("assigned"),
                other => panic!("{other:?}"),
            }
        }

        fn fail(&mut self, attempt_id: AttemptId, agent_id: AgentId) {
            self.apply_at(
                2_000,
                Command::Complete(CompleteCommand {
                    attempt_id,
                    agent_id,
                    success: false,
                    output: String::new(),
                    error: "exit 1".into(),
                    exit_code: Some(1),
                }),
            );
        }
    }

    fn plan_at(
        w: &World,
        leases: &mut Leases,
        connected: &[AgentId],
        now: Instant,
        now_ms: u64,
    ) -> Plan {
        let connected = connected.iter().copied().collect();
        plan(
            &w.state,
            leases,
            &connected,
            now,
            now_ms,
            Limits {
                expiry_margin: MARGIN,
                batch_max: 256,
            },
            &mut placement::Shares::default(),
        )
    }

    #[test]
    fn ready_steps_go_to_connected_agents_only() {
        let mut w = World::new();
        let agent = w.agent("a1");
        let workflow = w.submit("w", false);
        let mut leases = Leases::new();
        let now = Instant::now();
        assert_eq!(
            plan_at(&w, &mut leases, &[], now, 1_000),
            Plan::default(),
            "no connected agent: nothing to do"
        );
        let plan = plan_at(&w, &mut leases, &[agent], now, 1_000);
        assert_eq!(
            plan.assign,
            [Assignment {
                workflow_id: workflow,
                step: StepIndex(0),
                agent_id: agent
            }]
        );
        assert!(plan.stop.is_empty() && plan.expire.is_empty() && !plan.tick);
    }

    /// A new leader adopts its predecessor's leases with a full TTL from now (design rule 4),
    /// and expires one only once the TTL and the margin have both passed.
    #[test]
    fn adopted_leases_get_a_full_ttl_then_lapse_past_the_margin() {
        let mut w = World::new();
        let agent = w.agent("a1");
        let workflow = w.submit("w", false);
        let attempt = w.assign(workflow, agent);
        let mut leases = Leases::new();
        let won = Instant::now();
        let plan = plan_at(&w, &mut leases, &[agent], won, 1_000);
        assert_eq!(plan, Plan::default(), "a running step, its lease fresh");
        assert_eq!(leases[&attempt], Lease::new(won, 2_000, agent));

        let at_ttl_and_margin = won + Duration::from_millis(2_000) + MARGIN;
        assert!(
            plan_at(&w, &mut leases, &[agent], at_ttl_and_margin, 1_000)
                .expire
                .is_empty()
        );
        let lapsed = plan_at(
            &w,
            &mut leases,
            &[agent],
            at_ttl_and_margin + Duration::from_millis(1),
            1_000,
        );
        assert_eq!(lapsed.expire, [attempt]);
        assert!(
            lapsed.assign.is_empty() && !lapsed.tick,
            "expiry goes alone"
        );
    }

    /// A cancelled attempt's lease stays in the book: its agent is told once, and its expiry
    /// (proposed like any lapsed lease) gives back what it held.
    #[test]
    fn a_stopped_attempt_keeps_its_lease_until_it_lapses() {
        let mut w = World::new();
        let agent = w.agent("a1");
        let workflow = w.submit("w", false);
        let attempt = w.assign(workflow, agent);
        let mut leases = Leases::new();
        let now = Instant::now();
        plan_at(&w, &mut leases, &[agent], now, 1_000);
        w.apply_at(
            1_500,
            Command::Cancel(crate::state::CancelCommand {
                workflow_id: workflow,
                reason: String::new(),
                actor: String::new(),
            }),
        );
        assert!(w.state.is_drained(attempt));
        let plan = plan_at(&w, &mut leases, &[agent], now, 1_500);
        assert_eq!(plan.stop, [(attempt, agent)]);
        assert!(leases[&attempt].stopped);
        let again = plan_at(&w, &mut leases, &[agent], now, 1_500);
        assert!(again.stop.is_empty(), "told once");
        let lapsed = plan_at(
            &w,
            &mut leases,
            &[agent],
            now + Duration::from_millis(2_000) + MARGIN + Duration::from_millis(1),
            1_500,
        );
        assert_eq!(lapsed.expire, [attempt]);
        w.apply_at(
            1_600,
            Command::ExpireLeases {
                attempts: lapsed.expire,
            },
        );
        assert!(!w.state.is_drained(attempt));
        plan_at(&w, &mut leases, &[agent], now, 1_600);
        assert!(leases.is_empty());
    }

    /// An attempt that ended in the log (reported, say) leaves the book, and its agent is told
    /// to stop; a retry's backoff ending makes a Tick due in state time, not before.
    #[test]
    fn ended_attempts_are_stopped_and_backoffs_make_ticks_due() {
        let mut w = World::new();
        let agent = w.agent("a1");
        let workflow = w.submit("w", true);
        let attempt = w.assign(workflow, agent);
        let mut leases = Leases::new();
        let now = Instant::now();
        plan_at(&w, &mut leases, &[agent], now, 1_000);
        w.fail(attempt, agent);
        let plan = plan_at(&w, &mut leases, &[agent], now, 11_999);
        assert_eq!(plan.stop, [(attempt, agent)]);
        assert!(leases.is_empty());
        assert!(!plan.tick, "the backoff ends at 12,000 in state time");
        assert!(plan.assign.is_empty(), "the step waits in backoff");
        let due = plan_at(&w, &mut leases, &[agent], now, 12_000);
        assert!(due.tick && due.stop.is_empty());
    }
}
