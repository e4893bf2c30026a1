//! The placement policy, as a pure function: which ready steps go to which connected agents now.
//! Respects task types (an agent gets only steps it announced it runs), label constraints and
//! slot/cpu/memory capacity (never over-allocates, counting what
//! this same round already placed), takes steps in queue order (priority, then age) and does not
//! let one unplaceable step block the ones behind it.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::scheduling::{labels_match, step_request};
use crate::state::{AgentId, Allocation, Assignment, ClusterState};

use crate::limits::READY_SCANNED_PER_ROUND_MAX;

/// Assignments for up to `batch_max` ready steps onto the `connected` agents.
pub fn place(
    state: &ClusterState,
    connected: &BTreeSet<AgentId>,
    batch_max: usize,
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
    for key in state.ready_queue().take(READY_SCANNED_PER_ROUND_MAX) {
        if out.len() == batch_max || free_slots == 0 {
            break;
        }
        let Some(workflow) = state.workflow(key.workflow_id) else {
            continue;
        };
        let spec_step = &workflow.spec.steps[key.step.get()];
        let request = step_request(spec_step);
        // The matching agent with the most free slots (spreads load), lowest id on ties.
        let best = planned
            .iter()
            .filter_map(|(&id, used)| {
                let agent = state.agent(id)?;
                (agent.runs(spec_step)
                    && labels_match(&spec_step.constraints, &agent.labels)
                    && used.fits(agent, request))
                .then_some((agent.slots - used.slots, id))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        if let Some((_, agent_id)) = best {
            let used = planned.get_mut(&agent_id).expect("chosen from planned");
            used.slots += request.slots;
            used.cpu_millis += request.cpu_millis;
            used.memory_mb += request.memory_mb;
            free_slots -= u64::from(request.slots);
            out.push(Assignment {
                workflow_id: key.workflow_id,
                step: key.step,
                agent_id,
            });
        }
    }
    out
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
        let placed = place(&w.state, &connected, 100);
        let by_step: Vec<(u64, AgentId)> = placed
            .iter()
            .map(|a| (a.workflow_id.0, a.agent_id))
            .collect();
        // eu has one slot: the high-priority step (workflow 2) gets it, not the older low one.
        // "anywhere" goes to us (more free slots); "too-big" no longer fits us' cpu; mars never fits.
        assert_eq!(by_step, [(2, eu), (3, us)]);
        assert!(
            place(&w.state, &BTreeSet::new(), 100).is_empty(),
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
        let placed: Vec<(u64, AgentId)> = place(&w.state, &BTreeSet::from([builtin, billing]), 100)
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
        let placed = place(&w.state, &BTreeSet::from([anything]), 100);
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
                let placed = place(&w.state, &connected, batch_max);
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
