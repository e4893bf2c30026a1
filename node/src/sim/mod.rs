//! A deterministic simulation of the core: several replicas of the state machine applying one
//! log, a leader running the scheduler's pure round ([`crate::planning::plan`]) with its own
//! lease book, simulated agents that run, heartbeat, self-fence, report, pause, die, come back
//! and drift their clocks, leadership moving to another replica (the old leader simply stops
//! acting, as a deposed one does once it learns), replicas restarted from a
//! snapshot of themselves, and a client that submits, cancels, pauses, resumes, retries and
//! signals. One thread, simulated time, one seeded generator: a seed replays bit for bit
//! ([`Report::trace`] is the SHA-256 of every log entry).
//!
//! Checked after every entry (the state's own invariants: `check_invariants` on every apply in
//! test builds, explicitly here otherwise) and at every step of simulated time:
//! - replicas that applied the same entries hold the same state (hash);
//! - a step's accepted success comes from the attempt that holds it, at most once per run of it
//!   (a retry starts a new run);
//! - no agent runs more steps than its slots (by what the simulated agents really run);
//! - no concurrency key has more holders running than its limit, by what really runs, frozen
//!   (paused) agents aside, as the chaos suite counts zombies aside: a cancelled step's key stays
//!   held until its agent has surely stopped;
//! - once the faults heal, every workflow ends (liveness).
//!
//! What it does not model: Raft itself (the log is one sequence that commits at once; openraft's
//! own tests and the chaos suite cover elections and replication), lost or doubled proposals
//! (the chaos suite's ambiguous writes), disks. A whole-node simulation would add them (see
//! docs/CHAOS.md, "Deterministic simulation").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::planning::placement::Shares;
use crate::planning::plan::{self, Lease, Leases, Limits};
use crate::state::{
    AgentId, ApplyCtx, AttemptId, CancelCommand, ClusterState, Command, CompleteCommand, LogEntry,
    PauseCommand, RegisterAgentCommand, Response, RetryCommand, SignalCommand, StepIndex,
    StepState, SubmitCommand, WorkflowId,
};

/// What one seed did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    /// Log entries committed.
    pub entries: usize,
    /// Workflows submitted (all ended).
    pub workflows: usize,
    /// Attempts the agents started, and those that ran to a report.
    pub attempts: usize,
    pub reports_accepted: usize,
    pub reports_refused: usize,
    /// Faults injected: leader changes, agent deaths, pauses, replica restarts.
    pub faults: usize,
    /// The most steps of one concurrency key that ran at once.
    pub key_peak: usize,
    /// SHA-256 of every entry of the log, in order: equal for equal seeds.
    pub trace: [u8; 32],
}

/// A broken property, with the seed that shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: at {} ms: {} (replay: cargo run --release -p baton-node --example sim -- \
             --seed {})",
            self.seed, self.at_ms, self.what, self.seed
        )
    }
}

/// Simulated time the faults run for, then the time the healed cluster has to finish.
const FAULT_MS: u64 = 30_000;
const SETTLE_MS: u64 = 240_000;
/// Replicas, agents, and slots per agent.
const REPLICAS: usize = 3;
const AGENTS: usize = 3;
const SLOTS: u32 = 3;
/// Lease TTL of every step, and how long before it an agent stops a step it could not renew.
const LEASE_TTL_MS: u64 = 2_000;
const AGENT_SAFETY_MS: u64 = baton_proto::limits::AGENT_LEASE_SAFETY_MARGIN_MS_MIN;
const HEARTBEAT_MS: u64 = baton_proto::limits::HEARTBEAT_INTERVAL_MS;
const LEASE_EXPIRY_MARGIN_MS: u64 = baton_proto::limits::LEASE_EXPIRY_MARGIN_MS;
/// The leader offers steps to an agent it heard from this recently (`SESSION_SILENCE_MS_MAX`):
/// one just cut off or frozen still gets some, and loses them.
const SILENCE_MS: u64 = baton_proto::limits::SESSION_SILENCE_MS_MAX;
/// Concurrency keys the workload's steps and workflows share.
const STEP_KEYS: [(&str, u32); 2] = [("db", 1), ("api", 2)];
const WORKFLOW_KEY: (&str, u32) = ("deploy", 1);

/// Runs one seed to its end. A broken invariant of the state machine panics inside `apply`;
/// it comes back as a violation naming the seed.
pub fn run(seed: u64) -> Result<Report, Violation> {
    let outcome = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed);
        sim.run()?;
        Ok(sim.report())
    });
    outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Err(Violation {
            seed,
            at_ms: 0,
            what: format!("the state machine panicked: {what}"),
        })
    })
}

struct Replica {
    state: ClusterState,
    /// Log entries applied.
    applied: usize,
    up: bool,
    /// Its clock's offset from true time (ms): the time a leader stamps entries with.
    skew_ms: i64,
}

/// A step an agent runs.
#[derive(Clone, Debug)]
struct Exec {
    workflow: WorkflowId,
    step: StepIndex,
    /// The scoped step key it holds, and its workflow's key, if any.
    step_key: Option<String>,
    workflow_key: Option<String>,
    /// When it finishes (true time), and whether it succeeds.
    ends_ms: u64,
    success: bool,
    /// On the agent's clock: when it sent the last heartbeat the leader answered.
    renewed_at: u64,
}

struct Agent {
    name: String,
    id: Option<AgentId>,
    alive: bool,
    /// Frozen (SIGSTOP) until then: no heartbeat, no progress, no report.
    paused_until: u64,
    /// Cut off from the leader until then.
    partitioned_until: u64,
    /// Its clock runs at (1000 + drift) / 1000 of true time.
    drift_permille: i64,
    running: BTreeMap<AttemptId, Exec>,
    /// Results waiting to be reported.
    outbox: Vec<(AttemptId, bool)>,
    next_heartbeat_ms: u64,
    /// When the leader last heard from it.
    last_seen_ms: u64,
}

impl Agent {
    fn clock(&self, now_ms: u64) -> u64 {
        (now_ms as i64 * (1000 + self.drift_permille) / 1000) as u64
    }

    fn frozen(&self, now_ms: u64) -> bool {
        now_ms < self.paused_until
    }

    fn reachable(&self, now_ms: u64) -> bool {
        self.alive && !self.frozen(now_ms) && now_ms >= self.partitioned_until
    }
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    now_ms: u64,
    base: Instant,
    replicas: Vec<Replica>,
    leader: usize,
    leases: Leases,
    shares: Shares,
    log: Vec<LogEntry>,
    /// The leader's state hash after each checkpointed entry (every `CHECK_EVERY`).
    hashes: BTreeMap<usize, [u8; 32]>,
    agents: Vec<Agent>,
    trace: Sha256,
    /// Accepted successes per (workflow, step) since the step's last rerun.
    successes: BTreeMap<(WorkflowId, StepIndex), u32>,
    submitted: Vec<WorkflowId>,
    attempts: usize,
    reports_accepted: usize,
    reports_refused: usize,
    faults: usize,
    key_peak: usize,
    /// The leader's response to the entry it applied last.
    last_response: Option<Response>,
    /// Messages on their way to each agent, in the order the leader sent them (one stream per
    /// agent): (when they arrive, what).
    inbox: Vec<Vec<(u64, Message)>>,
}

/// What the leader tells an agent.
enum Message {
    /// Run this attempt: (how long it takes, whether it succeeds, the keys it holds).
    Run(AttemptId, Exec, u64),
    /// Stop this attempt: it no longer holds a lease.
    Stop(AttemptId),
}

/// Replicas compare state hashes at every this many entries.
const CHECK_EVERY: usize = 25;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let replicas = (0..REPLICAS)
            .map(|_| Replica {
                state: ClusterState::default(),
                applied: 0,
                up: true,
                skew_ms: rng.random_range(-2_000..=2_000),
            })
            .collect();
        let agents = (0..AGENTS)
            .map(|i| Agent {
                name: format!("agent-{i}"),
                id: None,
                alive: true,
                paused_until: 0,
                partitioned_until: 0,
                drift_permille: rng.random_range(-20..=20),
                running: BTreeMap::new(),
                outbox: Vec::new(),
                next_heartbeat_ms: 0,
                last_seen_ms: 0,
            })
            .collect();
        Sim {
            seed,
            rng,
            now_ms: 1_000_000,
            base: Instant::now(),
            replicas,
            leader: 0,
            leases: Leases::default(),
            shares: Shares::default(),
            log: Vec::new(),
            hashes: BTreeMap::new(),
            agents,
            trace: Sha256::new(),
            successes: BTreeMap::new(),
            submitted: Vec::new(),
            attempts: 0,
            reports_accepted: 0,
            reports_refused: 0,
            faults: 0,
            key_peak: 0,
            last_response: None,
            inbox: (0..AGENTS).map(|_| Vec::new()).collect(),
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            at_ms: self.now_ms,
            what,
        }
    }

    fn state(&self) -> &ClusterState {
        &self.replicas[self.leader].state
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    /// The leader's clock: what it stamps entries with.
    fn leader_ms(&self) -> u64 {
        (self.now_ms as i64 + self.replicas[self.leader].skew_ms) as u64
    }

    /// Commits `command` (the leader stamps it) and applies it on the leader; followers catch
    /// up in [`Sim::replicate`].
    fn propose(&mut self, command: Command) -> Result<Response, Violation> {
        let entry = LogEntry {
            time_ms: self.leader_ms(),
            command,
        };
        self.trace.update(entry.encode());
        self.log.push(entry);
        self.catch_up(self.leader)?;
        let index = self.log.len();
        let response = self.last_response.take().expect("applied");
        if index.is_multiple_of(CHECK_EVERY) {
            self.hashes.insert(index, self.state().state_hash());
        }
        Ok(response)
    }

    /// Applies every committed entry replica `r` lacks.
    fn catch_up(&mut self, r: usize) -> Result<(), Violation> {
        while self.replicas[r].applied < self.log.len() {
            self.apply_next(r)?;
        }
        Ok(())
    }

    fn apply_next(&mut self, r: usize) -> Result<(), Violation> {
        let index = self.replicas[r].applied;
        let entry = self.log[index].clone();
        let replica = &mut self.replicas[r];
        let applied = replica.state.apply(
            ApplyCtx {
                index: index as u64 + 1,
            },
            entry,
        );
        replica.applied += 1;
        // Test builds check every invariant inside `apply`; the nightly binary does it here.
        if !cfg!(test) {
            replica.state.check_invariants();
        }
        if r == self.leader {
            self.last_response = Some(applied.response);
        }
        let applied = self.replicas[r].applied;
        if r != self.leader
            && let Some(hash) = self.hashes.get(&applied)
            && *hash != self.replicas[r].state.state_hash()
        {
            return Err(self.violation(format!(
                "replica {r} disagrees with the leader at entry {applied}"
            )));
        }
        Ok(())
    }
}

impl Sim {
    fn run(&mut self) -> Result<(), Violation> {
        for i in 0..AGENTS {
            self.register(i)?;
        }
        let fault_end = self.now_ms + FAULT_MS;
        let end = fault_end + SETTLE_MS;
        while self.now_ms < end {
            let faults = self.now_ms < fault_end;
            if faults {
                self.client()?;
                self.fault()?;
            } else {
                self.heal()?;
                if self.all_ended() {
                    break;
                }
            }
            self.agents_act()?;
            self.round()?;
            self.replicate()?;
            self.check_running()?;
            self.now_ms += self.rng.random_range(1..=60);
        }
        if !self.all_ended() {
            let open: Vec<String> = self
                .submitted
                .iter()
                .filter_map(|id| self.state().workflow(*id))
                .filter(|w| !w.state.is_terminal())
                .map(|w| {
                    let steps: Vec<StepState> = w.steps.iter().map(|s| s.state).collect();
                    format!("{} {steps:?}", w.id)
                })
                .collect();
            return Err(self.violation(format!(
                "workflows never ended after the faults healed: {open:?}"
            )));
        }
        for r in 0..REPLICAS {
            self.replicas[r].up = true;
            self.catch_up(r)?;
            if self.replicas[r].state.state_hash() != self.state().state_hash() {
                return Err(self.violation(format!("replica {r} disagrees at the end")));
            }
        }
        Ok(())
    }

    fn report(&self) -> Report {
        Report {
            seed: self.seed,
            entries: self.log.len(),
            workflows: self.submitted.len(),
            attempts: self.attempts,
            reports_accepted: self.reports_accepted,
            reports_refused: self.reports_refused,
            faults: self.faults,
            key_peak: self.key_peak,
            trace: self.trace.clone().finalize().into(),
        }
    }

    fn all_ended(&self) -> bool {
        self.submitted.iter().all(|id| {
            self.state()
                .workflow(*id)
                .is_none_or(|w| w.state.is_terminal())
        })
    }

    fn register(&mut self, i: usize) -> Result<(), Violation> {
        let name = self.agents[i].name.clone();
        let response = self.propose(Command::RegisterAgent(RegisterAgentCommand {
            name,
            labels: Default::default(),
            slots: SLOTS,
            cpu_millis: 4_000,
            memory_mb: 4_096,
            task_types: Vec::new(),
            namespaces: Vec::new(),
        }))?;
        match response {
            Response::AgentRegistered { agent_id } => {
                self.agents[i].id = Some(agent_id);
                self.agents[i].last_seen_ms = self.now_ms;
                Ok(())
            }
            other => Err(self.violation(format!("registering agent {i}: {other:?}"))),
        }
    }

    /// A client's turn: mostly nothing; sometimes a submit or an operator's command.
    fn client(&mut self) -> Result<(), Violation> {
        let roll = self.rng.random_range(0..100);
        if roll < 8 && self.submitted.len() < 40 {
            let spec = self.workflow_spec();
            let params = BTreeMap::from([(
                "env".to_owned(),
                ["prod", "dev"][self.rng.random_range(0..2)].to_owned(),
            )]);
            let response = self.propose(Command::Submit(SubmitCommand {
                spec: spec.encode_to_vec(),
                idempotency_key: String::new(),
                params,
                template: None,
                namespace: String::new(),
                actor: "client".into(),
            }))?;
            match response {
                Response::Submitted { workflow_id, .. } => self.submitted.push(workflow_id),
                other => return Err(self.violation(format!("submit refused: {other:?}"))),
            }
            return Ok(());
        }
        if self.submitted.is_empty() || roll >= 15 {
            return Ok(());
        }
        let id = self.submitted[self.rng.random_range(0..self.submitted.len())];
        let command = match roll {
            8 | 13 => Command::Cancel(CancelCommand {
                workflow_id: id,
                reason: "sim".into(),
                actor: "client".into(),
            }),
            9 | 10 => Command::Pause(PauseCommand {
                workflow_id: id,
                paused: roll == 9,
                actor: "client".into(),
            }),
            11 => Command::Retry(RetryCommand {
                workflow_id: id,
                from_step: String::new(),
                actor: "client".into(),
            }),
            _ => Command::Signal(SignalCommand {
                workflow_id: id,
                step: "gate".into(),
                data: "{}".into(),
                reject: roll == 12,
                actor: "client".into(),
            }),
        };
        let retried = matches!(command, Command::Retry(_));
        let response = self.propose(command)?;
        if retried && let Response::Retried { steps, .. } = response {
            let workflow = self.state().workflow(id).expect("retried").clone();
            for name in steps {
                if let Some(i) = workflow.spec.steps.iter().position(|s| s.name == name) {
                    self.successes.remove(&(id, StepIndex(i as u32)));
                }
            }
        }
        Ok(())
    }

    /// A random small DAG: steps that fail at first (retried), hold keys, are rate limited,
    /// wait for a signal, or must start within a deadline.
    fn workflow_spec(&mut self) -> pb::WorkflowSpec {
        let count = self.rng.random_range(1..=4);
        let mut steps = Vec::new();
        for i in 0..count {
            let depends_on = match i {
                0 => Vec::new(),
                _ => vec![format!("s{}", self.rng.random_range(0..i))],
            };
            let mut step = pb::StepSpec {
                name: format!("s{i}"),
                depends_on,
                task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
                lease_ttl_ms: LEASE_TTL_MS,
                retry: Some(pb::RetryPolicy {
                    max_attempts: 3,
                    backoff: Some(pb::Backoff {
                        initial_ms: 200,
                        multiplier: 2.0,
                        max_ms: 1_000,
                    }),
                }),
                ..Default::default()
            };
            if self.rng.random_bool(0.4) {
                let (key, limit) = STEP_KEYS[self.rng.random_range(0..STEP_KEYS.len())];
                step.concurrency = Some(pb::Concurrency {
                    key: key.into(),
                    limit,
                });
            }
            if self.rng.random_bool(0.15) {
                step.rate_limit = Some(pb::RateLimit {
                    key: "partner".into(),
                    per_second: 5,
                    per_minute: 0,
                    burst: 2,
                });
            }
            if self.rng.random_bool(0.1) {
                step.schedule_to_start_timeout_ms = 20_000;
            }
            steps.push(step);
        }
        if self.rng.random_bool(0.2) {
            steps.push(pb::StepSpec {
                name: "gate".into(),
                depends_on: vec!["s0".into()],
                task: Some(pb::step_spec::Task::Wait(pb::WaitTask {
                    signal: "go".into(),
                    timeout_ms: 15_000,
                })),
                ..Default::default()
            });
        }
        pb::WorkflowSpec {
            name: "sim".into(),
            steps,
            params: vec![pb::ParamSpec {
                name: "env".into(),
                ..Default::default()
            }],
            concurrency: self.rng.random_bool(0.3).then(|| pb::Concurrency {
                key: format!("{}-{{{{ params.env }}}}", WORKFLOW_KEY.0),
                limit: WORKFLOW_KEY.1,
            }),
            ..Default::default()
        }
    }

    /// One fault, now and then: the leader cut off (another takes over, with no lease book), a
    /// replica restarted from a snapshot of itself, an agent killed, frozen, cut off, or back.
    fn fault(&mut self) -> Result<(), Violation> {
        if !self.rng.random_bool(0.01) {
            return Ok(());
        }
        self.faults += 1;
        match self.rng.random_range(0..6) {
            0 => self.change_leader()?,
            1 => {
                let r = self.rng.random_range(0..REPLICAS);
                if r != self.leader {
                    let restarted = ClusterState::decode(&self.replicas[r].state.encode())
                        .map_err(|e| self.violation(format!("snapshot of replica {r}: {e}")))?;
                    self.replicas[r].state = restarted;
                }
            }
            2 => {
                let i = self.rng.random_range(0..AGENTS);
                let agent = &mut self.agents[i];
                agent.alive = false;
                // Its process and its steps die with it.
                agent.running.clear();
                agent.outbox.clear();
            }
            3 => {
                let i = self.rng.random_range(0..AGENTS);
                self.agents[i].paused_until = self.now_ms + self.rng.random_range(500..6_000);
            }
            4 => {
                let i = self.rng.random_range(0..AGENTS);
                self.agents[i].partitioned_until = self.now_ms + self.rng.random_range(500..6_000);
            }
            _ => {
                // A dead agent comes back (a new process under its name).
                if let Some(i) = (0..AGENTS).find(|&i| !self.agents[i].alive) {
                    self.agents[i].alive = true;
                    self.register(i)?;
                }
            }
        }
        Ok(())
    }

    /// Another replica leads: it has every committed entry, and none of the old leader's
    /// memory (lease deadlines, fair shares).
    fn change_leader(&mut self) -> Result<(), Violation> {
        let next = (self.leader + self.rng.random_range(1..REPLICAS)) % REPLICAS;
        self.catch_up(next)?;
        self.leader = next;
        self.leases = Leases::default();
        self.shares = Shares::default();
        Ok(())
    }

    /// After the faults: every agent back and reachable, every paused workflow resumed, every
    /// gate answered.
    fn heal(&mut self) -> Result<(), Violation> {
        for i in 0..AGENTS {
            if !self.agents[i].alive {
                self.agents[i].alive = true;
                self.register(i)?;
            }
            self.agents[i].paused_until = 0;
            self.agents[i].partitioned_until = 0;
        }
        let open: Vec<(WorkflowId, bool, bool)> = self
            .submitted
            .iter()
            .filter_map(|id| self.state().workflow(*id))
            .filter(|w| !w.state.is_terminal())
            .map(|w| {
                let gate = w.steps.iter().any(|s| s.state == StepState::AwaitingSignal);
                (w.id, w.paused_at_ms != 0, gate)
            })
            .collect();
        for (id, paused, gate) in open {
            if paused {
                self.propose(Command::Pause(PauseCommand {
                    workflow_id: id,
                    paused: false,
                    actor: "client".into(),
                }))?;
            }
            if gate {
                self.propose(Command::Signal(SignalCommand {
                    workflow_id: id,
                    step: "gate".into(),
                    data: "{}".into(),
                    reject: false,
                    actor: "client".into(),
                }))?;
            }
        }
        Ok(())
    }

    /// Each agent: heartbeats (renewing its leases with the leader, or learning they are
    /// gone), stops steps it could not renew in time, finishes steps, and reports.
    fn agents_act(&mut self) -> Result<(), Violation> {
        let now_ms = self.now_ms;
        for i in 0..AGENTS {
            // A frozen agent reads its messages when it wakes; one that is dead or cut off
            // loses them (its stream is gone).
            if self.agents[i].frozen(now_ms) {
                continue;
            }
            let arrived = self.inbox[i].partition_point(|(at, _)| *at <= now_ms);
            let reachable = self.agents[i].reachable(now_ms);
            for (_, message) in self.inbox[i].drain(..arrived).collect::<Vec<_>>() {
                if !reachable {
                    continue;
                }
                let agent = &mut self.agents[i];
                match message {
                    Message::Stop(attempt) => {
                        agent.running.remove(&attempt);
                    }
                    Message::Run(attempt, mut exec, run_ms) => {
                        exec.ends_ms = now_ms + run_ms;
                        exec.renewed_at = agent.clock(now_ms);
                        agent.running.insert(attempt, exec);
                        self.attempts += 1;
                    }
                }
            }
        }
        for i in 0..AGENTS {
            if !self.agents[i].alive || self.agents[i].frozen(self.now_ms) {
                continue;
            }
            let clock = self.agents[i].clock(self.now_ms);
            // Self-fencing: a step whose lease it could not renew in time is stopped.
            let agent = &mut self.agents[i];
            agent
                .running
                .retain(|_, exec| clock < exec.renewed_at + LEASE_TTL_MS - AGENT_SAFETY_MS);
            // Steps that finished.
            let now_ms = self.now_ms;
            let done: Vec<(AttemptId, bool)> = agent
                .running
                .iter()
                .filter(|(_, exec)| exec.ends_ms <= now_ms)
                .map(|(id, exec)| (*id, exec.success))
                .collect();
            for (attempt, success) in done {
                agent.running.remove(&attempt);
                agent.outbox.push((attempt, success));
            }
            if !agent.reachable(self.now_ms) {
                continue;
            }
            let Some(agent_id) = agent.id else {
                continue;
            };
            if self.now_ms >= agent.next_heartbeat_ms {
                agent.next_heartbeat_ms = self.now_ms + HEARTBEAT_MS;
                agent.last_seen_ms = self.now_ms;
                let held: Vec<AttemptId> = agent.running.keys().copied().collect();
                // As the real leader does (`Sessions::stopped_unless_running`): a stopped
                // attempt this agent had said it ran and no longer lists lapses now.
                let lapsed = self.instant() - Duration::from_millis(LEASE_EXPIRY_MARGIN_MS + 1);
                for (id, lease) in self.leases.iter_mut() {
                    if lease.stopped && lease.seen && lease.agent == agent_id && !held.contains(id)
                    {
                        lease.deadline = lapsed;
                    }
                }
                for attempt in held {
                    let live = self
                        .state()
                        .live_attempt(attempt)
                        .is_some_and(|l| l.agent_id == agent_id);
                    let agent = &mut self.agents[i];
                    if live {
                        self.leases.insert(
                            attempt,
                            Lease::renewed(
                                self.base + Duration::from_millis(self.now_ms),
                                LEASE_TTL_MS,
                                agent_id,
                            ),
                        );
                        if let Some(exec) = agent.running.get_mut(&attempt) {
                            exec.renewed_at = clock;
                        }
                    } else {
                        // The leader says it is not this agent's any more: stop it.
                        agent.running.remove(&attempt);
                    }
                }
            }
            let outbox = std::mem::take(&mut self.agents[i].outbox);
            for (attempt, success) in outbox {
                self.deliver(i, agent_id, attempt, success)?;
            }
        }
        Ok(())
    }

    /// An agent's result reaches the leader, which proposes it.
    fn deliver(
        &mut self,
        i: usize,
        agent_id: AgentId,
        attempt: AttemptId,
        success: bool,
    ) -> Result<(), Violation> {
        let live = self.state().live_attempt(attempt).cloned();
        let response = self.propose(Command::Complete(CompleteCommand {
            attempt_id: attempt,
            agent_id,
            success,
            output: attempt.0.to_string(),
            error: if success {
                String::new()
            } else {
                "sim failure".into()
            },
            exit_code: Some(i32::from(!success)),
        }))?;
        match response {
            Response::Completed => {
                self.reports_accepted += 1;
                let live = live.ok_or_else(|| {
                    self.violation(format!(
                        "a report of attempt {attempt} accepted while not live"
                    ))
                })?;
                if live.agent_id != agent_id {
                    return Err(self.violation(format!(
                        "agent {i}'s report of attempt {attempt} accepted; it is leased to {}",
                        live.agent_id
                    )));
                }
                if success {
                    let count = self
                        .successes
                        .entry((live.workflow_id, live.step))
                        .or_default();
                    *count += 1;
                    if *count > 1 {
                        return Err(self.violation(format!(
                            "workflow {} step {} succeeded twice in one run",
                            live.workflow_id, live.step.0
                        )));
                    }
                }
            }
            Response::ReportRefused { .. } => self.reports_refused += 1,
            other => return Err(self.violation(format!("report answered {other:?}"))),
        }
        Ok(())
    }

    /// The leader's scheduling round: the pure plan, carried out.
    fn round(&mut self) -> Result<(), Violation> {
        let connected: BTreeSet<AgentId> = self
            .agents
            .iter()
            .filter(|a| a.alive && self.now_ms.saturating_sub(a.last_seen_ms) <= SILENCE_MS)
            .filter_map(|a| a.id)
            .collect();
        let now = self.instant();
        let leader_ms = self.leader_ms();
        let plan = plan::plan(
            &self.replicas[self.leader].state,
            &mut self.leases,
            &connected,
            now,
            leader_ms,
            Limits {
                expiry_margin: Duration::from_millis(baton_proto::limits::LEASE_EXPIRY_MARGIN_MS),
                batch_max: 64,
            },
            &mut self.shares,
        );
        for (attempt, agent_id) in plan.stop.iter().copied() {
            if let Some(i) = self.agents.iter().position(|a| a.id == Some(agent_id)) {
                self.send(i, Message::Stop(attempt));
            }
        }
        if !plan.expire.is_empty() {
            self.propose(Command::ExpireLeases {
                attempts: plan.expire,
            })?;
            return Ok(());
        }
        if plan.tick {
            self.propose(Command::Tick)?;
        }
        if plan.assign.is_empty() {
            return Ok(());
        }
        let assignments = plan.assign.clone();
        let Response::Assigned { attempts } = self.propose(Command::Assign {
            assignments: plan.assign,
        })?
        else {
            return Err(self.violation("an Assign answered otherwise".into()));
        };
        for (assignment, attempt) in assignments.iter().zip(attempts) {
            let Some(attempt) = attempt else {
                continue;
            };
            self.leases.insert(
                attempt,
                Lease::new(self.instant(), LEASE_TTL_MS, assignment.agent_id),
            );
            let Some(i) = self
                .agents
                .iter()
                .position(|a| a.id == Some(assignment.agent_id))
            else {
                continue;
            };
            // Now and then an assignment is lost on the wire: its lease lapses.
            if self.rng.random_bool(0.02) {
                continue;
            }
            let workflow = self
                .state()
                .workflow(assignment.workflow_id)
                .expect("assigned");
            let spec_step = &workflow.spec.steps[assignment.step.get()];
            let step_key = spec_step.concurrency.as_ref().map(|c| c.key.clone());
            let workflow_key = workflow
                .keys
                .as_ref()
                .and_then(|k| k.workflow.as_ref())
                .map(|k| k.to_string());
            let run_ms = self.rng.random_range(50..3_000);
            let success = self.rng.random_bool(0.8);
            let exec = Exec {
                workflow: assignment.workflow_id,
                step: assignment.step,
                step_key,
                workflow_key,
                ends_ms: 0,
                success,
                renewed_at: 0,
            };
            self.send(i, Message::Run(attempt, exec, run_ms));
        }
        Ok(())
    }

    /// Puts a message on agent `i`'s stream: it arrives after those sent before it.
    fn send(&mut self, i: usize, message: Message) {
        let last = self.inbox[i].last().map_or(0, |(at, _)| *at);
        let at = last.max(self.now_ms) + self.rng.random_range(1..=100);
        self.inbox[i].push((at, message));
    }

    /// Followers apply some of what they lack, each at its own pace.
    fn replicate(&mut self) -> Result<(), Violation> {
        for r in 0..REPLICAS {
            if r == self.leader || !self.replicas[r].up {
                continue;
            }
            let lag = self.rng.random_range(0..8);
            while self.replicas[r].applied + lag < self.log.len() {
                self.apply_next(r)?;
            }
        }
        Ok(())
    }

    /// What really runs: capacity, and concurrency keys, frozen agents aside.
    fn check_running(&mut self) -> Result<(), Violation> {
        let mut step_keys: BTreeMap<&str, usize> = BTreeMap::new();
        // No step runs twice at once (one attempt's lease lapsed or was taken while it ran).
        let mut steps: BTreeMap<(WorkflowId, StepIndex), AttemptId> = BTreeMap::new();
        let mut workflow_keys: BTreeMap<&str, BTreeSet<WorkflowId>> = BTreeMap::new();
        for agent in self.agents.iter().filter(|a| a.alive) {
            if agent.running.len() > SLOTS as usize {
                return Err(self.violation(format!(
                    "{} runs {} steps on {SLOTS} slots",
                    agent.name,
                    agent.running.len()
                )));
            }
            if agent.frozen(self.now_ms) {
                continue;
            }
            for (attempt, exec) in &agent.running {
                if let Some(other) = steps.insert((exec.workflow, exec.step), *attempt) {
                    return Err(self.violation(format!(
                        "workflow {} step {} runs twice at once: attempts {other} and {attempt}",
                        exec.workflow, exec.step.0
                    )));
                }
                if let Some(key) = &exec.step_key {
                    *step_keys.entry(key).or_default() += 1;
                }
                if let Some(key) = &exec.workflow_key {
                    workflow_keys.entry(key).or_default().insert(exec.workflow);
                }
            }
        }
        for (key, limit) in STEP_KEYS {
            let running = step_keys.get(key).copied().unwrap_or(0);
            self.key_peak = self.key_peak.max(running);
            if running > limit as usize {
                return Err(self.violation(format!(
                    "{running} steps of key {key} run at once; its limit is {limit}"
                )));
            }
        }
        for (key, workflows) in workflow_keys {
            if workflows.len() > WORKFLOW_KEY.1 as usize {
                return Err(self.violation(format!(
                    "workflows {workflows:?} of key {key} run at once; its limit is {}",
                    WORKFLOW_KEY.1
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
