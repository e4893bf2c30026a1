//! The placement policy, as a pure function: which ready steps go to which connected agents now.
//! Respects task types (an agent gets only steps it announced it runs), label constraints and
//! slot/cpu/memory capacity (never over-allocates, counting what
//! this same round already placed), and does not let one unplaceable step block the ones behind
//! it. Steps are taken in [`fair_order`]: each namespace's in its queue order (priority, then
//! age), the namespaces interleaved by weight, so one namespace's backlog never holds back
//! another's steps.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use crate::state::keys::{ScopedKey, rate_key, tokens_at};
use crate::state::scheduling::{labels_match, step_request};
use crate::state::{AgentId, Allocation, Assignment, ClusterState, ReadyKey};

use crate::limits::{RATE_DEFERRED_PER_ROUND_MAX, READY_SCANNED_PER_ROUND_MAX};

/// [`place_at`] the state's own time.
#[cfg(test)]
pub fn place(
    state: &ClusterState,
    connected: &BTreeSet<AgentId>,
    batch_max: usize,
    shares: &mut Shares,
) -> Vec<Assignment> {
    place_at(state, connected, batch_max, shares, state.now_ms())
}

/// Assignments for up to `batch_max` ready steps onto the `connected` agents, taken in
/// [`fair_order`]; `shares` records what each namespace got. A rate-limited step is placed only
/// while its key's bucket holds a token at `now_ms` (the leader's stamping clock, which the
/// `Assign` entry will carry), counting the tokens this round already spent.
pub fn place_at(
    state: &ClusterState,
    connected: &BTreeSet<AgentId>,
    batch_max: usize,
    shares: &mut Shares,
    now_ms: u64,
) -> Vec<Assignment> {
    let mut planned: BTreeMap<AgentId, Allocation> = connected
        .iter()
        .filter(|id| state.agent(**id).is_some())
        .map(|&id| (id, state.allocation(id)))
        .collect();
    let mut out = Vec::new();
    // Every step takes one slot: once none is free, nothing further in the queue can be placed,
    // so a backlog behind a full fleet costs nothing per round instead of a scan.
    let mut free_slots: u64 = planned
        .iter()
        .filter_map(|(id, used)| {
            Some(u64::from(
                state.agent(*id)?.slots.saturating_sub(used.slots),
            ))
        })
        .sum();
    if free_slots == 0 {
        return out;
    }
    // Tokens left this round per rate-limit key met so far.
    let mut tokens: HashMap<ScopedKey, u64> = HashMap::new();
    // Steps looked at for an agent, and steps passed over because their rate limit has no
    // token left: each within its own bound, so a backlog of rate-limited steps (a lookup and
    // a hash probe each) does not use up the round's scan before the steps behind it.
    let (mut scanned, mut deferred) = (0, 0);
    for key in fair_order(state, shares) {
        if out.len() == batch_max
            || free_slots == 0
            || scanned == READY_SCANNED_PER_ROUND_MAX
            || deferred == RATE_DEFERRED_PER_ROUND_MAX
        {
            break;
        }
        let Some(workflow) = state.workflow(key.workflow_id) else {
            scanned += 1;
            continue;
        };
        let rate = rate_key(workflow, key.step);
        if let Some((rate_key, rate)) = &rate {
            let left = tokens
                .entry(rate_key.clone())
                .or_insert_with(|| tokens_at(state.rate_bucket(rate_key), *rate, now_ms));
            if *left == 0 {
                deferred += 1;
                continue;
            }
        }
        scanned += 1;
        let spec_step = &workflow.spec.steps[key.step.get()];
        let request = step_request(spec_step);
        // The matching agent with the most free slots (spreads load), lowest id on ties.
        let best = planned
            .iter()
            .filter_map(|(&id, used)| {
                let agent = state.agent(id)?;
                (agent.runs(spec_step)
                    && agent.serves(&workflow.namespace)
                    && labels_match(&spec_step.constraints, &agent.labels)
                    && used.fits(agent, request))
                .then(|| (agent.slots.saturating_sub(used.slots), id))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        if let Some((_, agent_id)) = best {
            let used = planned.get_mut(&agent_id).expect("chosen from planned");
            used.slots += request.slots;
            used.cpu_millis += request.cpu_millis;
            used.memory_mb += request.memory_mb;
            free_slots -= u64::from(request.slots);
            if let Some((rate_key, _)) = &rate
                && let Some(left) = tokens.get_mut(rate_key)
            {
                *left -= 1;
            }
            out.push(Assignment {
                workflow_id: key.workflow_id,
                step: key.step,
                agent_id,
            });
        }
    }
    shares.placed(state, &out);
    out
}

/// Stride scheduling's pass of each namespace with ready steps: leader memory, kept across
/// rounds (a round usually has a slot or two free, so the share must be earned over many), and
/// forgotten for a namespace with nothing ready. A namespace advances by `STRIDE / weight` per
/// step placed; the one furthest behind goes next (ties: by name).
#[derive(Debug, Default)]
pub struct Shares {
    pass: HashMap<Arc<str>, u64>,
}

const STRIDE: u64 = 1 << 20;

fn stride(weight: u32) -> u64 {
    STRIDE / u64::from(weight.max(1))
}

impl Shares {
    /// Where each namespace with ready steps starts this round: its pass, and never behind the
    /// namespace furthest behind that has one, so a namespace back from idle gets its turn
    /// without having saved up turns while it had nothing to run.
    fn starts<'a>(&self, state: &'a ClusterState) -> Vec<(&'a str, u32, u64)> {
        let floor = state
            .ready_by_namespace()
            .filter_map(|(name, _, _)| self.pass.get(name).copied())
            .min()
            .unwrap_or(0);
        state
            .ready_by_namespace()
            .map(|(name, weight, _)| {
                let pass = self.pass.get(name).copied().unwrap_or(floor).max(floor);
                (name, weight, pass)
            })
            .collect()
    }

    /// Records the steps placed this round, and forgets namespaces with nothing ready. A
    /// namespace that placed nothing although its turn came before another's that did (its
    /// steps fit no agent, say) is moved up to that one's start: it had its turn and could not
    /// use it, so it neither holds the others' starting point back nor saves up turns.
    fn placed(&mut self, state: &ClusterState, assignments: &[Assignment]) {
        let starts = self.starts(state);
        let mut pass: HashMap<Arc<str>, u64> = HashMap::with_capacity(starts.len());
        for (name, _, start) in &starts {
            pass.insert(Arc::from(*name), *start);
        }
        let mut served: HashMap<&str, u64> = HashMap::new();
        for assignment in assignments {
            let Some(workflow) = state.workflow(assignment.workflow_id) else {
                continue;
            };
            if let Some(at) = pass.get_mut(&*workflow.namespace) {
                *at += stride(state.weight(&workflow.namespace));
                *served.entry(&workflow.namespace).or_default() += 1;
            }
        }
        let level = starts
            .iter()
            .filter(|(name, _, _)| served.contains_key(name))
            .map(|(_, _, start)| *start)
            .min();
        if let Some(level) = level {
            for (name, _, _) in &starts {
                if !served.contains_key(name)
                    && let Some(at) = pass.get_mut(*name)
                {
                    *at = (*at).max(level);
                }
            }
        }
        self.pass = pass;
    }
}

/// The ready steps in the order placement takes them: each namespace's own queue order
/// (priority, then age), the namespaces interleaved by stride scheduling from where `shares`
/// says they stand, so over any stretch each namespace with steps waiting gets a share in
/// proportion to its weight. One namespace alone is its queue as it stands. O(log namespaces)
/// a step.
pub fn fair_order<'a>(
    state: &'a ClusterState,
    shares: &Shares,
) -> impl Iterator<Item = ReadyKey> + 'a {
    let mut lanes: Vec<(u64, Box<dyn Iterator<Item = &ReadyKey> + 'a>)> = Vec::new();
    let mut heap = BinaryHeap::new();
    let starts = shares.starts(state);
    for (i, ((name, weight, start), (_, _, keys))) in starts
        .into_iter()
        .zip(state.ready_by_namespace())
        .enumerate()
    {
        lanes.push((stride(weight), Box::new(keys.iter())));
        heap.push(Reverse((start, name, i)));
    }
    std::iter::from_fn(move || {
        loop {
            let Reverse((pass, name, lane)) = heap.pop()?;
            let (stride, keys) = &mut lanes[lane];
            if let Some(key) = keys.next() {
                heap.push(Reverse((pass + *stride, name, lane)));
                return Some(*key);
            }
            // This namespace has nothing more ready: it leaves the rotation.
        }
    })
}

#[cfg(test)]
mod tests {
    use baton_proto::v1 as pb;
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::state::{
        ApplyCtx, Command, LogEntry, RegisterAgentCommand, Response, SubmitCommand,
    };

    struct World {
        state: ClusterState,
        index: u64,
    }

    impl World {
        fn apply(&mut self, command: Command) -> Response {
            self.index += 1;
            self.state
                .apply(
                    ApplyCtx { index: self.index },
                    LogEntry {
                        time_ms: self.index,
                        command,
                    },
                )
                .response
        }

        fn agent(&mut self, name: &str, slots: u32, cpu: u32, labels: &[(&str, &str)]) -> AgentId {
            self.agent_running(name, slots, cpu, labels, &[])
        }

        fn agent_running(
            &mut self,
            name: &str,
            slots: u32,
            cpu: u32,
            labels: &[(&str, &str)],
            task_types: &[&str],
        ) -> AgentId {
            match self.apply(Command::RegisterAgent(RegisterAgentCommand {
                namespaces: Default::default(),
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                slots,
                cpu_millis: cpu,
                memory_mb: 1024,
                task_types: task_types.iter().map(|t| t.to_string()).collect(),
            })) {
                Response::AgentRegistered { agent_id } => agent_id,
                other => panic!("{other:?}"),
            }
        }

        fn submit(&mut self, steps: Vec<pb::StepSpec>, priority: i32) {
            let spec = pb::WorkflowSpec {
                name: "w".into(),
                steps,
                priority,
                ..Default::default()
            };
            self.apply(Command::Submit(SubmitCommand {
                actor: String::new(),
                namespace: Default::default(),
                spec: spec.encode_to_vec(),
                idempotency_key: "".into(),
                params: Default::default(),
                template: None,
            }));
        }
    }

    fn step(name: &str, cpu: u32, constraints: &[(&str, &str)]) -> pb::StepSpec {
        pb::StepSpec {
            name: name.into(),
            task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
            resources: Some(pb::Resources {
                cpu_millis: cpu,
                memory_mb: 0,
            }),
            constraints: constraints
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    /// Submits `count` one-step workflows in `namespace` in one entry (a state test checks
    /// every invariant after each entry: one entry keeps a big backlog cheap to build).
    fn backlog(w: &mut World, namespace: &str, count: usize) {
        let spec = pb::WorkflowSpec {
            name: format!("{namespace}-job"),
            steps: vec![step("s", 0, &[])],
            ..Default::default()
        }
        .encode_to_vec();
        let submits = (0..count)
            .map(|_| {
                Command::Submit(SubmitCommand {
                    actor: String::new(),
                    namespace: namespace.into(),
                    spec: spec.clone(),
                    idempotency_key: String::new(),
                    params: Default::default(),
                    template: None,
                })
            })
            .collect();
        w.apply(Command::Batch(submits));
    }

    fn namespace(w: &mut World, name: &str, weight: u32) {
        w.apply(Command::CreateNamespace(
            crate::state::CreateNamespaceCommand {
                name: name.into(),
                description: String::new(),
                quotas: Default::default(),
                weight,
            },
        ));
    }

    /// Rounds of placement, each step finishing before the next round, until a step of
    /// `namespace` is placed: (rounds, steps of other namespaces started before it).
    fn rounds_until_placed(
        w: &mut World,
        connected: &BTreeSet<AgentId>,
        namespace: &str,
    ) -> (usize, usize) {
        let mut others = 0;
        let mut shares = Shares::default();
        for round in 1.. {
            let placed = place(&w.state, connected, 256, &mut shares);
            assert!(!placed.is_empty(), "round {round} placed nothing");
            let mine = placed
                .iter()
                .any(|a| &*w.state.workflow(a.workflow_id).unwrap().namespace == namespace);
            if mine {
                return (round, others);
            }
            others += placed.len();
            let Response::Assigned { attempts } = w.apply(Command::Assign {
                assignments: placed.clone(),
            }) else {
                panic!("not assigned")
            };
            for (assignment, attempt) in placed.iter().zip(attempts) {
                w.apply(Command::Complete(crate::state::CompleteCommand {
                    attempt_id: attempt.expect("assigned"),
                    agent_id: assignment.agent_id,
                    success: true,
                    output: String::new(),
                    error: String::new(),
                    exit_code: None,
                }));
            }
        }
        unreachable!()
    }

    /// The starvation figure of issue 23: namespace A holds 10,000 ready steps, B submits one
    /// after them. Fair order places B's in the first round a slot frees; the old global queue
    /// order (priority, then age, across namespaces) placed it after all of A's.
    #[test]
    fn a_backlog_in_one_namespace_does_not_starve_another() {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
        };
        namespace(&mut w, "team-a", 0);
        namespace(&mut w, "team-b", 0);
        let agent = w.agent("x", 8, 64_000, &[]);
        backlog(&mut w, "team-a", 10_000);
        backlog(&mut w, "team-b", 1);
        let connected = BTreeSet::from([agent]);
        let fair = rounds_until_placed(&mut w, &connected, "team-b");
        println!(
            "fair order: team-b's step placed in round {} after {} of team-a's 10,000",
            fair.0, fair.1
        );
        assert_eq!(fair, (1, 0));
        // For comparison, not measured: the global queue order takes all of team-a's first,
        // 8 a round on this agent.
        let fifo_rounds = 10_000usize.div_ceil(8) + 1;
        println!(
            "global queue order (before namespaces): round {fifo_rounds}, after all 10,000 of \
             team-a's"
        );
    }

    #[test]
    fn namespaces_share_a_round_by_weight_and_priority_holds_within_one() {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
        };
        namespace(&mut w, "heavy", 3);
        namespace(&mut w, "light", 1);
        let agent = w.agent("x", 8, 64_000, &[]);
        backlog(&mut w, "heavy", 100);
        backlog(&mut w, "light", 100);
        let connected = BTreeSet::from([agent]);
        let placed = place(&w.state, &connected, 256, &mut Shares::default());
        let in_ns = |ns: &str| {
            placed
                .iter()
                .filter(|a| &*w.state.workflow(a.workflow_id).unwrap().namespace == ns)
                .count()
        };
        assert_eq!((in_ns("heavy"), in_ns("light")), (6, 2));
        // Within a namespace, its own order: the oldest first.
        let heavy: Vec<u64> = placed
            .iter()
            .filter(|a| &*w.state.workflow(a.workflow_id).unwrap().namespace == "heavy")
            .map(|a| a.workflow_id.0)
            .collect();
        assert!(heavy.windows(2).all(|p| p[0] < p[1]), "{heavy:?}");
        // The order itself: three of heavy's for each of light's.
        let order: Vec<ReadyKey> = fair_order(&w.state, &Shares::default()).take(8).collect();
        let namespaces: Vec<&str> = order
            .iter()
            .map(|k| &*w.state.workflow(k.workflow_id).unwrap().namespace)
            .collect();
        assert_eq!(
            namespaces,
            [
                "heavy", "light", "heavy", "heavy", "heavy", "light", "heavy", "heavy"
            ]
        );
    }

    /// In steady state a round has one slot free: the shares carry over, so namespaces take
    /// turns by weight instead of the first by name taking every slot.
    #[test]
    fn one_free_slot_a_round_goes_round_the_namespaces_by_weight() {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
        };
        namespace(&mut w, "a-first", 2);
        namespace(&mut w, "b-second", 1);
        let agent = w.agent("x", 1, 64_000, &[]);
        backlog(&mut w, "a-first", 20);
        backlog(&mut w, "b-second", 20);
        let connected = BTreeSet::from([agent]);
        let mut shares = Shares::default();
        let mut served = Vec::new();
        for _ in 0..9 {
            let placed = place(&w.state, &connected, 256, &mut shares);
            assert_eq!(placed.len(), 1);
            let workflow = w.state.workflow(placed[0].workflow_id).unwrap();
            served.push(workflow.namespace.to_string());
            let Response::Assigned { attempts } = w.apply(Command::Assign {
                assignments: placed.clone(),
            }) else {
                panic!("not assigned")
            };
            w.apply(Command::Complete(crate::state::CompleteCommand {
                attempt_id: attempts[0].unwrap(),
                agent_id: agent,
                success: true,
                output: String::new(),
                error: String::new(),
                exit_code: None,
            }));
        }
        let b = served.iter().filter(|n| n.as_str() == "b-second").count();
        assert_eq!(b, 3, "{served:?}");
        // Never two of b's in a row, never three of a's.
        assert!(
            served
                .windows(2)
                .all(|p| !(p[0] == "b-second" && p[1] == "b-second")),
            "{served:?}"
        );
        // A namespace back from idle starts level with the others, not with saved-up turns.
        backlog(&mut w, "c-late", 20);
        let placed = place(&w.state, &connected, 256, &mut shares);
        assert_eq!(placed.len(), 1);
    }

    #[test]
    fn a_namespace_pinned_agent_gets_only_its_namespaces_steps() {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
        };
        namespace(&mut w, "team-a", 0);
        let Response::AgentRegistered { agent_id: pinned } =
            w.apply(Command::RegisterAgent(RegisterAgentCommand {
                name: "pinned".into(),
                labels: Default::default(),
                slots: 8,
                cpu_millis: 64_000,
                memory_mb: 0,
                task_types: Vec::new(),
                namespaces: vec!["team-a".into()],
            }))
        else {
            panic!("not registered")
        };
        backlog(&mut w, "default", 3);
        backlog(&mut w, "team-a", 2);
        let placed = place(
            &w.state,
            &BTreeSet::from([pinned]),
            256,
            &mut Shares::default(),
        );
        let namespaces: Vec<String> = placed
            .iter()
            .map(|a| {
                w.state
                    .workflow(a.workflow_id)
                    .unwrap()
                    .namespace
                    .to_string()
            })
            .collect();
        assert_eq!(namespaces, ["team-a", "team-a"]);
    }

    #[test]
    fn constraints_capacity_and_priority_decide() {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
        };
        let eu = w.agent("eu-1", 1, 1000, &[("zone", "eu")]);
        let us = w.agent("us-1", 2, 1000, &[("zone", "us")]);
        w.submit(vec![step("low", 0, &[("zone", "eu")])], 0);
        w.submit(vec![step("high", 0, &[("zone", "eu")])], 10);
        w.submit(vec![step("anywhere", 600, &[])], 0);
        w.submit(vec![step("too-big", 600, &[])], 0);
        w.submit(vec![step("mars", 0, &[("zone", "mars")])], 0);
        let connected = BTreeSet::from([eu, us]);
        let placed = place(&w.state, &connected, 100, &mut Shares::default());
        let by_step: Vec<(u64, AgentId)> = placed
            .iter()
            .map(|a| (a.workflow_id.0, a.agent_id))
            .collect();
        // eu has one slot: the high-priority step (workflow 2) gets it, not the older low one.
        // "anywhere" goes to us (more free slots); "too-big" no longer fits us' cpu; mars never fits.
        assert_eq!(by_step, [(2, eu), (3, us)]);
        assert!(
            place(&w.state, &BTreeSet::new(), 100, &mut Shares::default()).is_empty(),
            "no connected agent, no placement"
        );
    }

    fn custom(name: &str, kind: &str) -> pb::StepSpec {
        pb::StepSpec {
            task: Some(pb::step_spec::Task::Custom(pb::CustomTask {
                r#type: kind.into(),
                payload: String::new(),
            })),
            ..step(name, 0, &[])
        }
    }

    /// An agent is given only steps of the task types it announced, however free it is; an
    /// agent that announced none (an entry from before types were recorded) takes any.
    #[test]
    fn agents_get_only_the_task_types_they_run() {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
        };
        let builtin = w.agent_running("builtin", 8, 1000, &[], &["exec", "http", "noop", "sleep"]);
        let billing = w.agent_running("billing", 1, 1000, &[], &["noop", "billing/charge"]);
        w.submit(vec![custom("charge", "billing/charge")], 0);
        w.submit(vec![custom("refund", "billing/refund")], 0);
        w.submit(vec![step("plain", 0, &[])], 0);
        let placed: Vec<(u64, AgentId)> = place(
            &w.state,
            &BTreeSet::from([builtin, billing]),
            100,
            &mut Shares::default(),
        )
        .iter()
        .map(|a| (a.workflow_id.0, a.agent_id))
        .collect();
        // "charge" only to billing, though builtin has more free slots; nobody runs "refund";
        // the noop goes to builtin (billing's one slot is taken).
        assert_eq!(placed, [(1, billing), (3, builtin)]);
        let workflow = w.state.workflow(crate::state::WorkflowId(2)).unwrap();
        assert_eq!(
            w.state
                .pending_reason(workflow, crate::state::StepIndex(0))
                .as_deref(),
            Some("no registered agent runs task type \"billing/refund\"")
        );

        // The state refuses an assignment the leader should never have made (an older leader).
        let refused = w.apply(Command::Assign {
            assignments: vec![Assignment {
                workflow_id: crate::state::WorkflowId(1),
                step: crate::state::StepIndex(0),
                agent_id: builtin,
            }],
        });
        assert_eq!(
            refused,
            Response::Assigned {
                attempts: vec![None]
            }
        );

        let anything = w.agent("anything", 1, 1000, &[]);
        let placed = place(
            &w.state,
            &BTreeSet::from([anything]),
            100,
            &mut Shares::default(),
        );
        assert_eq!(
            placed.len(),
            1,
            "an agent that did not say takes any step: {placed:?}"
        );
    }

    proptest! {
        /// Whatever the queue and fleet, a round never over-allocates an agent, never breaks a
        /// constraint, never places a step twice, and apply accepts every assignment it makes.
        #[test]
        fn placement_never_over_allocates(
            agents in prop::collection::vec((1u32..4, 0u32..3000, prop::bool::ANY), 1..5),
            steps in prop::collection::vec((0u32..2000, prop::bool::ANY), 1..40),
            batch_max in 1usize..50,
        ) {
            let mut w = World { state: ClusterState::default(), index: 0 };
            let mut connected = BTreeSet::new();
            for (i, (slots, cpu, eu)) in agents.iter().enumerate() {
                let zone = if *eu { "eu" } else { "us" };
                connected.insert(w.agent(&format!("a{i}"), *slots, *cpu, &[("zone", zone)]));
            }
            for (cpu, eu) in &steps {
                let constraints: &[(&str, &str)] = if *eu { &[("zone", "eu")] } else { &[] };
                w.submit(vec![step("s", *cpu, constraints)], 0);
            }
            for _round in 0..3 {
                let placed = place(&w.state, &connected, batch_max, &mut Shares::default());
                prop_assert!(placed.len() <= batch_max);
                let n = placed.len();
                let response = w.apply(Command::Assign { assignments: placed });
                match response {
                    Response::Assigned { attempts } => {
                        prop_assert_eq!(attempts.len(), n);
                        prop_assert!(attempts.iter().all(Option::is_some), "apply refused a placement");
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                // check_invariants (run by apply in tests) asserts no agent is over-allocated.
            }
        }
    }
}
