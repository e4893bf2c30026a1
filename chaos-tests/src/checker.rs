//! The checker: a pure function from what the harness recorded (request history, the steps'
//! journal outside the cluster, the final workflows and replica statuses) to violations.
//! Pure so that deliberately broken histories can be fed to it in unit tests.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{self, History};

/// What a submit request came to, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked(u64),
    Failed,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub key: String,
    pub outcome: Outcome,
}

/// One execution of a step, from the journal the step itself appends to. `end_ms` is `None`
/// when the process was killed before it finished (a fenced or orphaned attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    pub workflow: u64,
    pub step: String,
    pub token: u64,
    pub agent: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

/// A step as the cluster reports it at the end.
#[derive(Clone, Debug)]
pub struct FinalStep {
    pub name: String,
    pub depends_on: Vec<String>,
    pub succeeded: bool,
    /// The fencing token of the current (last) attempt.
    pub attempt_id: u64,
    /// The token the accepted result says it was produced by (the step echoes it), if any.
    pub output_token: Option<u64>,
    /// A `wait` step: it runs on no agent, so it has no executions and no token in its output;
    /// it opens on a signal, whose data becomes its output.
    pub gate: Option<Gate>,
}

/// What a finished `wait` step shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Its output: the data of the signal that opened it.
    pub output: String,
    /// When it ended, in the cluster's time (the same machine clock as the journal's).
    pub finished_ms: u64,
}

#[derive(Clone, Debug)]
pub struct FinalWorkflow {
    pub id: u64,
    pub key: String,
    /// The nonce a key-less submit labelled it with.
    pub nonce: Option<String>,
    pub finished: bool,
    pub cancelled: bool,
    pub steps: Vec<FinalStep>,
}

#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    pub node_id: u64,
    pub applied_index: u64,
    pub state_hash: String,
}

#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub requests: Vec<Request>,
    pub journal: Vec<Execution>,
    /// Every workflow the cluster lists at the end.
    pub workflows: Vec<FinalWorkflow>,
    /// Statuses after the liveness phase, one per member that answered.
    pub replicas: Vec<ReplicaStatus>,
    /// How many replicas should have answered (the cluster's size); a silent one is a failure.
    pub replicas_expected: usize,
    pub slots_per_agent: usize,
    /// (agent, from_ms, to_ms): the agent was SIGSTOPped. Its steps kept running and it could
    /// not fence them, so an overlap with its executions is the zombie case fencing tokens exist
    /// for: counted and reported, not a violation.
    pub zombie_windows: Vec<(String, u64, u64)>,
    /// The data of each approval the workload sent (or may have: its outcome unknown), by
    /// workflow; each is unique to its workflow and no rejection carries it.
    pub approvals: BTreeMap<u64, String>,
    /// Each retry the workload sent (or may have), by workflow: the steps that had succeeded
    /// when it was sent, with their accepted tokens. A retry reruns none of them.
    pub retries: BTreeMap<u64, Vec<(String, u64)>>,
    /// The schedules the workload created, with what their state says at the end.
    pub schedules: BTreeMap<String, ScheduleFacts>,
    /// Every run of a schedule in the final state: (schedule, nominal time, workflow id).
    pub schedule_runs: Vec<(String, u64, u64)>,
    /// Steps of the workload that hold a concurrency key of their own (one key per step name,
    /// across all workflows), with the key's limit.
    pub key_limits: BTreeMap<String, usize>,
    /// What clients saw meanwhile, and the workflows' histories at the end.
    pub history: History,
}

/// A schedule of the workload, as the cluster reports it after the liveness phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduleFacts {
    /// Its interval: its times are the multiples of it.
    pub every_ms: u64,
    /// Times it counted as missed (older than its catch-up window when reached).
    pub missed: u64,
    /// Times it started a run for, by its own count.
    pub started: u64,
}

/// What the checker found: violations (any fails the run) and counted facts.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    /// Executions beyond the first per step (retries, fenced or lost attempts).
    pub re_executions: usize,
    /// Pairs of executions of one step that overlapped in time while one of them was fenced
    /// (killed): allowed, counted.
    pub fenced_overlaps: usize,
    /// Overlaps where the earlier execution's agent was paused meanwhile (a zombie).
    pub zombie_overlaps: usize,
    pub invariants: Vec<(&'static str, usize)>,
    /// The most completed executions of each keyed step that ran at once: whether the run
    /// pressed its keys at all.
    pub key_peaks: BTreeMap<String, usize>,
}

pub const INVARIANTS: [&str; 20] = [
    "no acknowledged workflow lost",
    "one workflow per idempotency key",
    "accepted result carries the current token",
    "no stale report accepted",
    "dependency order held",
    "no overlap of two live leases",
    "capacity never exceeded",
    "every workflow ends",
    "replicas agree (same index and hash)",
    "a gate opens only on its approval",
    "a retry reruns no succeeded step",
    "one run per schedule time, none skipped",
    "a concurrency key never past its limit",
    history::KEYLESS,
    history::READ_SEES_ACK,
    history::READ_MONOTONIC,
    history::WATCH_WHOLE,
    history::ATTEMPTS_INCREASE,
    history::LEASE_RESPECTED,
    history::CANCEL_STOPS,
];

pub fn check(evidence: &Evidence) -> Verdict {
    let mut verdict = Verdict::default();
    let mut by_invariant: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fail = |invariant: &'static str, message: String, verdict: &mut Verdict| {
        *by_invariant.entry(invariant).or_default() += 1;
        verdict.violations.push(format!("{invariant}: {message}"));
    };

    // 1-2: acknowledged workflows exist, one per key, with the acknowledged id.
    let mut ids_by_key: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    // Key-less workflows are invariant 14's (history.rs).
    for workflow in evidence.workflows.iter().filter(|w| !w.key.is_empty()) {
        ids_by_key
            .entry(workflow.key.as_str())
            .or_default()
            .insert(workflow.id);
    }
    for (key, ids) in &ids_by_key {
        if ids.len() > 1 {
            fail(
                INVARIANTS[1],
                format!("key {key} has workflows {ids:?}"),
                &mut verdict,
            );
        }
    }
    for request in &evidence.requests {
        if let Outcome::Acked(id) = request.outcome {
            match ids_by_key.get(request.key.as_str()) {
                Some(ids) if ids.contains(&id) => {}
                Some(ids) => fail(
                    INVARIANTS[1],
                    format!("key {} acked as {id}, cluster has {ids:?}", request.key),
                    &mut verdict,
                ),
                None => fail(
                    INVARIANTS[0],
                    format!("workflow {id} (key {}) acked, then lost", request.key),
                    &mut verdict,
                ),
            }
        }
    }

    // Executions by (workflow, step).
    let mut executions: BTreeMap<(u64, &str), Vec<&Execution>> = BTreeMap::new();
    for execution in &evidence.journal {
        executions
            .entry((execution.workflow, execution.step.as_str()))
            .or_default()
            .push(execution);
    }
    for list in executions.values_mut() {
        list.sort_by_key(|e| (e.start_ms, e.token));
        verdict.re_executions += list.len().saturating_sub(1);
    }

    for workflow in &evidence.workflows {
        let steps: BTreeMap<&str, &FinalStep> = workflow
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        for step in &workflow.steps {
            let runs = executions
                .get(&(workflow.id, step.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(gate) = &step.gate {
                // 10: a wait step succeeds only with the data of an approval sent for its own
                // workflow (a rejection, a timeout or another workflow's signal never opens it).
                if step.succeeded && evidence.approvals.get(&workflow.id) != Some(&gate.output) {
                    fail(
                        INVARIANTS[9],
                        format!(
                            "workflow {} step {} opened with {:?}, approval sent: {:?}",
                            workflow.id,
                            step.name,
                            gate.output,
                            evidence.approvals.get(&workflow.id)
                        ),
                        &mut verdict,
                    );
                }
                continue;
            }
            // 3: the accepted result was produced by the step's current attempt.
            if step.succeeded {
                match step.output_token {
                    Some(token) if token == step.attempt_id => {}
                    other => fail(
                        INVARIANTS[2],
                        format!(
                            "workflow {} step {}: accepted result from token {other:?}, current \
                             token {}",
                            workflow.id, step.name, step.attempt_id
                        ),
                        &mut verdict,
                    ),
                }
                // 4: the accepted token ran and finished; a result from a token the journal
                // never saw finish means a report nobody produced (or a stale one) was taken.
                if !runs
                    .iter()
                    .any(|e| e.token == step.attempt_id && e.end_ms.is_some())
                {
                    fail(
                        INVARIANTS[3],
                        format!(
                            "workflow {} step {}: succeeded with token {} that never finished",
                            workflow.id, step.name, step.attempt_id
                        ),
                        &mut verdict,
                    );
                }
                // 5: every execution of a succeeded step's accepted attempt started after
                // each dependency's accepted attempt ended.
                let start = runs
                    .iter()
                    .filter(|e| e.token == step.attempt_id)
                    .map(|e| e.start_ms)
                    .min();
                for dependency in &step.depends_on {
                    let Some(dep) = steps.get(dependency.as_str()) else {
                        continue;
                    };
                    let dep_end = match &dep.gate {
                        // A gate ends when its signal applies, in the cluster's time.
                        Some(gate) => Some(gate.finished_ms),
                        None => executions
                            .get(&(workflow.id, dependency.as_str()))
                            .into_iter()
                            .flatten()
                            .filter(|e| e.token == dep.attempt_id)
                            .filter_map(|e| e.end_ms)
                            .max(),
                    };
                    match (start, dep_end) {
                        (Some(start), Some(end)) if start >= end => {}
                        (Some(start), end) => fail(
                            INVARIANTS[4],
                            format!(
                                "workflow {} step {} started at {start} before {dependency} \
                                 ended ({end:?})",
                                workflow.id, step.name
                            ),
                            &mut verdict,
                        ),
                        (None, _) => {}
                    }
                }
            }
            // 4 again: no execution of this step started with a token above the accepted one
            // before it was accepted... and no two *completed* executions overlapped: an
            // attempt that ran to its end held its lease all along (self-fencing kills it
            // otherwise), so a second attempt starting inside it means its lease was taken
            // away without the agent knowing (e.g. expired outside the log).
            for (i, a) in runs.iter().enumerate() {
                for b in &runs[i + 1..] {
                    let a_end = a.end_ms.unwrap_or(u64::MAX);
                    if b.start_ms < a_end && a.token != b.token {
                        let zombie = evidence.zombie_windows.iter().any(|(agent, from, to)| {
                            *agent == a.agent && *from < a_end && *to > a.start_ms
                        });
                        if zombie {
                            verdict.zombie_overlaps += 1;
                        } else if a.end_ms.is_some() {
                            fail(
                                INVARIANTS[5],
                                format!(
                                    "workflow {} step {}: token {} ran [{}, {}] while token {} \
                                     started at {}",
                                    workflow.id,
                                    step.name,
                                    a.token,
                                    a.start_ms,
                                    a_end,
                                    b.token,
                                    b.start_ms
                                ),
                                &mut verdict,
                            );
                        } else {
                            verdict.fenced_overlaps += 1;
                        }
                    }
                }
            }
        }
    }

    // 7: at no instant does an agent run more completed executions than it has slots. Killed
    // executions have no end, so only completed ones count (a killed one's end is unknown).
    let mut per_agent: BTreeMap<&str, Vec<(u64, i64)>> = BTreeMap::new();
    for execution in &evidence.journal {
        if let Some(end) = execution.end_ms {
            let events = per_agent.entry(execution.agent.as_str()).or_default();
            events.push((execution.start_ms, 1));
            events.push((end, -1));
        }
    }
    for (agent, mut events) in per_agent {
        events.sort_by_key(|&(time, delta)| (time, delta)); // ends before starts at a tie
        let mut running = 0i64;
        for (time, delta) in events {
            running += delta;
            if running > evidence.slots_per_agent as i64 {
                fail(
                    INVARIANTS[6],
                    format!("agent {agent} ran {running} steps at {time}"),
                    &mut verdict,
                );
                break;
            }
        }
    }

    // 13: at no instant do more completed executions of a keyed step run than its key's
    // limit. A step holds its key while it runs (and across a lease that expires), and an
    // attempt that ran to its end held its lease all along (self-fencing kills it otherwise), so
    // completed executions are holders; those of a paused agent (zombies) are left out, as a
    // killed one's end is unknown.
    for (step, limit) in &evidence.key_limits {
        let mut events: Vec<(u64, i64)> = Vec::new();
        for execution in evidence.journal.iter().filter(|e| &e.step == step) {
            let Some(end) = execution.end_ms else {
                continue;
            };
            let zombie = evidence.zombie_windows.iter().any(|(agent, from, to)| {
                *agent == execution.agent && *from < end && *to > execution.start_ms
            });
            if !zombie {
                events.push((execution.start_ms, 1));
                events.push((end, -1));
            }
        }
        events.sort_by_key(|&(time, delta)| (time, delta)); // ends before starts at a tie
        let mut running = 0i64;
        for (time, delta) in events {
            running += delta;
            let peak = verdict.key_peaks.entry(step.clone()).or_default();
            *peak = (*peak).max(running as usize);
            if running > *limit as i64 {
                fail(
                    INVARIANTS[12],
                    format!(
                        "{running} executions of step {step} ran at {time}, its key allows {limit}"
                    ),
                    &mut verdict,
                );
                break;
            }
        }
    }

    // 11: a retry reruns only what had not succeeded: each step that had succeeded when the
    // retry was sent still holds the same accepted token, and no execution of it started
    // with a newer one.
    let finals: BTreeMap<u64, &FinalWorkflow> =
        evidence.workflows.iter().map(|w| (w.id, w)).collect();
    for (id, kept) in &evidence.retries {
        let Some(workflow) = finals.get(id) else {
            continue; // not in the cluster at all: invariant 1's business
        };
        for (name, token) in kept {
            let now = workflow.steps.iter().find(|s| &s.name == name);
            if !now.is_some_and(|s| s.succeeded && s.attempt_id == *token) {
                fail(
                    INVARIANTS[10],
                    format!(
                        "workflow {id} step {name} had succeeded with token {token} before a \
                         retry, ends as {:?}",
                        now.map(|s| (s.succeeded, s.attempt_id))
                    ),
                    &mut verdict,
                );
            }
            let rerun = executions
                .get(&(*id, name.as_str()))
                .into_iter()
                .flatten()
                .find(|e| e.token > *token);
            if let Some(rerun) = rerun {
                fail(
                    INVARIANTS[10],
                    format!(
                        "workflow {id} step {name} succeeded with token {token}, then ran again \
                         with token {} after a retry",
                        rerun.token
                    ),
                    &mut verdict,
                );
            }
        }
    }

    // 12: a schedule starts at most one run per nominal time, and every time from its first
    // run to its last has one, but those it counted as missed (none, with a catch-up window
    // longer than any outage of the run).
    for (name, facts) in &evidence.schedules {
        let mut times: Vec<u64> = evidence
            .schedule_runs
            .iter()
            .filter(|(schedule, _, _)| schedule == name)
            .map(|&(_, nominal_ms, _)| nominal_ms)
            .collect();
        times.sort_unstable();
        for pair in times.windows(2).filter(|w| w[0] == w[1]) {
            fail(
                INVARIANTS[11],
                format!("schedule {name} ran twice for the time {}", pair[0]),
                &mut verdict,
            );
        }
        times.dedup();
        if times.len() as u64 != facts.started {
            fail(
                INVARIANTS[11],
                format!(
                    "schedule {name} says it started {} runs; the cluster holds {}",
                    facts.started,
                    times.len()
                ),
                &mut verdict,
            );
        }
        let (Some(first), Some(last)) = (times.first(), times.last()) else {
            fail(
                INVARIANTS[11],
                format!("schedule {name} never started a run"),
                &mut verdict,
            );
            continue;
        };
        let expected = (last - first) / facts.every_ms.max(1) + 1;
        let gaps = expected.saturating_sub(times.len() as u64);
        if gaps > facts.missed {
            let missing: Vec<u64> = (0..expected)
                .map(|i| first + i * facts.every_ms)
                .filter(|t| times.binary_search(t).is_err())
                .take(5)
                .collect();
            fail(
                INVARIANTS[11],
                format!(
                    "schedule {name}: {gaps} times between its first run and its last have no run \
                     ({} counted as missed), e.g. {missing:?}",
                    facts.missed
                ),
                &mut verdict,
            );
        }
    }

    // 8: liveness: everything ended. 9: every member answers, all at one index with one hash.
    for workflow in &evidence.workflows {
        if !workflow.finished {
            fail(
                INVARIANTS[7],
                format!("workflow {} never ended", workflow.id),
                &mut verdict,
            );
        }
    }
    if evidence.replicas.len() < evidence.replicas_expected {
        let answered: Vec<u64> = evidence.replicas.iter().map(|r| r.node_id).collect();
        fail(
            INVARIANTS[8],
            format!(
                "only nodes {answered:?} of {} reported their state after the faults healed",
                evidence.replicas_expected
            ),
            &mut verdict,
        );
    }
    if let Some(first) = evidence.replicas.first() {
        for replica in &evidence.replicas[1..] {
            if (replica.applied_index, &replica.state_hash)
                != (first.applied_index, &first.state_hash)
            {
                fail(
                    INVARIANTS[8],
                    format!(
                        "node {} at {} hash {} vs node {} at {} hash {}",
                        replica.node_id,
                        replica.applied_index,
                        replica.state_hash,
                        first.node_id,
                        first.applied_index,
                        first.state_hash
                    ),
                    &mut verdict,
                );
            }
        }
    }
    // 14-20: what clients saw (history.rs).
    for (invariant, message) in history::check(evidence) {
        fail(invariant, message, &mut verdict);
    }
    verdict.invariants = INVARIANTS
        .iter()
        .map(|name| (*name, by_invariant.get(name).copied().unwrap_or(0)))
        .collect();
    verdict
}

/// Parses the journal: lines `start WF STEP TOKEN AGENT MS` and `end WF STEP TOKEN AGENT MS`.
pub fn parse_journal(text: &str) -> Result<Vec<Execution>, String> {
    let mut runs: BTreeMap<(u64, String, u64), Execution> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, workflow, step, token, agent, ms] = fields[..] else {
            return Err(format!("journal line {}: {line:?}", n + 1));
        };
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("journal line {}: {s:?} is not a number", n + 1))
        };
        let (workflow, token, ms) = (number(workflow)?, number(token)?, number(ms)?);
        let key = (workflow, step.to_owned(), token);
        match kind {
            "start" => {
                runs.insert(
                    key,
                    Execution {
                        workflow,
                        step: step.to_owned(),
                        token,
                        agent: agent.to_owned(),
                        start_ms: ms,
                        end_ms: None,
                    },
                );
            }
            "end" => match runs.get_mut(&key) {
                Some(run) => run.end_ms = Some(ms),
                None => return Err(format!("journal line {}: end without start", n + 1)),
            },
            _ => return Err(format!("journal line {}: unknown kind {kind:?}", n + 1)),
        }
    }
    Ok(runs.into_values().collect())
}

#[cfg(test)]
mod tests {
    //! Each broken variant of the node is written as the evidence it would leave behind, and the
    //! checker must name the right invariant. A clean history must pass, so none of these tests
    //! passes by a checker that flags everything.
    use super::*;

    fn run(token: u64, agent: &str, start: u64, end: Option<u64>) -> Execution {
        Execution {
            workflow: 1,
            step: "a".into(),
            token,
            agent: agent.into(),
            start_ms: start,
            end_ms: end,
        }
    }

    fn step(name: &str, deps: &[&str], attempt_id: u64, output_token: u64) -> FinalStep {
        FinalStep {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            succeeded: true,
            attempt_id,
            output_token: Some(output_token),
            gate: None,
        }
    }

    /// Workflow 1: `a` (retried once: token 1 killed by fencing, token 2 succeeded), then `b`.
    fn clean() -> Evidence {
        let mut b = run(3, "agent-1", 300, Some(400));
        b.step = "b".into();
        Evidence {
            requests: vec![
                Request {
                    key: "k1".into(),
                    outcome: Outcome::Unknown,
                },
                Request {
                    key: "k1".into(),
                    outcome: Outcome::Acked(1),
                },
            ],
            journal: vec![
                run(1, "agent-1", 0, None),
                run(2, "agent-2", 100, Some(200)),
                b,
            ],
            workflows: vec![FinalWorkflow {
                id: 1,
                key: "k1".into(),
                nonce: None,
                finished: true,
                cancelled: false,
                steps: vec![step("a", &[], 2, 2), step("b", &["a"], 3, 3)],
            }],
            replicas: (1..=3)
                .map(|node_id| ReplicaStatus {
                    node_id,
                    applied_index: 40,
                    state_hash: "abc".into(),
                })
                .collect(),
            replicas_expected: 3,
            slots_per_agent: 1,
            zombie_windows: Vec::new(),
            approvals: BTreeMap::new(),
            retries: BTreeMap::new(),
            schedules: BTreeMap::new(),
            schedule_runs: Vec::new(),
            key_limits: BTreeMap::new(),
            history: History::default(),
        }
    }

    /// `clean()` with a schedule every 1000 ms that ran at 1000, 2000 and 4000 and counted 3000
    /// as missed.
    fn scheduled() -> Evidence {
        let mut evidence = clean();
        evidence.schedules.insert(
            "s".into(),
            ScheduleFacts {
                every_ms: 1000,
                missed: 1,
                started: 3,
            },
        );
        evidence.schedule_runs = vec![
            ("s".into(), 1000, 10),
            ("s".into(), 2000, 11),
            ("s".into(), 4000, 12),
        ];
        evidence
    }

    #[test]
    fn a_schedule_that_ran_once_per_time_passes_and_a_double_or_a_gap_is_caught() {
        let verdict = check(&scheduled());
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        let mut doubled = scheduled();
        doubled.schedule_runs.push(("s".into(), 2000, 13));
        doubled.schedules.get_mut("s").unwrap().started = 4;
        assert_eq!(
            violated(&doubled),
            ["one run per schedule time, none skipped"]
        );
        let mut gap = scheduled();
        gap.schedules.get_mut("s").unwrap().missed = 0;
        assert_eq!(violated(&gap), ["one run per schedule time, none skipped"]);
        let mut silent = scheduled();
        silent.schedule_runs.clear();
        silent.schedules.get_mut("s").unwrap().started = 0;
        assert_eq!(
            violated(&silent),
            ["one run per schedule time, none skipped"]
        );
    }

    /// `clean()` with a gate between `a` and `b`, opened at 250 by the approval sent for it,
    /// after a retry that kept `a`.
    fn gated() -> Evidence {
        let mut evidence = clean();
        let steps = &mut evidence.workflows[0].steps;
        steps[1].depends_on = vec!["gate".into()];
        steps.push(FinalStep {
            name: "gate".into(),
            depends_on: vec!["a".into()],
            succeeded: true,
            attempt_id: 0,
            output_token: None,
            gate: Some(Gate {
                output: "{\"approved\":1}".into(),
                finished_ms: 250,
            }),
        });
        evidence.approvals.insert(1, "{\"approved\":1}".into());
        evidence.retries.insert(1, vec![("a".into(), 2)]);
        evidence
    }

    fn violated(evidence: &Evidence) -> Vec<&'static str> {
        check(evidence)
            .invariants
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn a_clean_history_passes_and_counts_re_executions() {
        let verdict = check(&clean());
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.re_executions, 1);
        assert_eq!(
            verdict.fenced_overlaps, 1,
            "token 1 was killed, never ended"
        );
    }

    #[test]
    fn catches_a_key_held_by_more_than_its_limit() {
        let mut evidence = clean();
        evidence.slots_per_agent = 4;
        evidence.key_limits.insert("k".into(), 2);
        let keyed = |workflow, start, end: Option<u64>, agent: &str| Execution {
            workflow,
            step: "k".into(),
            token: 10 + workflow,
            agent: agent.into(),
            start_ms: start,
            end_ms: end,
        };
        // Two at once, a third after one ended, and a killed one overlapping: within the limit.
        evidence.journal.extend([
            keyed(5, 1000, Some(1300), "agent-1"),
            keyed(6, 1000, Some(1300), "agent-2"),
            keyed(7, 1300, Some(1600), "agent-1"),
            keyed(8, 1100, None, "agent-3"),
        ]);
        let verdict = check(&evidence);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        // A fourth that overlaps two completed ones is a third holder.
        evidence.journal.push(keyed(9, 1200, Some(1250), "agent-2"));
        assert_eq!(
            violated(&evidence),
            ["a concurrency key never past its limit"]
        );
    }

    #[test]
    fn a_gate_and_a_retry_pass_when_they_did_what_was_asked() {
        let verdict = check(&gated());
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
    }

    #[test]
    fn catches_a_gate_opened_without_its_approval() {
        // Opened by the rejection's data, or with no approval ever sent.
        let mut evidence = gated();
        evidence.workflows[0].steps[2].gate.as_mut().unwrap().output = "not today".into();
        assert_eq!(violated(&evidence), ["a gate opens only on its approval"]);
        let mut evidence = gated();
        evidence.approvals.clear();
        assert_eq!(violated(&evidence), ["a gate opens only on its approval"]);
        // A step behind the gate that started before the gate opened.
        let mut evidence = gated();
        evidence.workflows[0].steps[2]
            .gate
            .as_mut()
            .unwrap()
            .finished_ms = 350;
        assert_eq!(violated(&evidence), ["dependency order held"]);
    }

    #[test]
    fn catches_a_retry_that_reran_a_succeeded_step() {
        // `a` ran again with a new token after the retry, and the new result was taken.
        let mut evidence = gated();
        evidence.journal.push(run(5, "agent-1", 500, Some(600)));
        evidence.workflows[0].steps[0] = step("a", &[], 5, 5);
        assert_eq!(violated(&evidence), ["a retry reruns no succeeded step"]);
        // Ran again, even if the old result stayed.
        let mut evidence = gated();
        evidence.journal.push(run(5, "agent-1", 500, Some(600)));
        assert_eq!(violated(&evidence), ["a retry reruns no succeeded step"]);
    }

    /// Broken variant 1: apply accepts a report without checking its token. The zombie attempt
    /// (token 1) reports after token 2 was assigned; its result is accepted, so the step's
    /// output says token 1 while its current attempt is 2.
    #[test]
    fn catches_a_report_accepted_without_its_token_checked() {
        let mut evidence = clean();
        evidence.journal[0].end_ms = Some(150); // the zombie ran on, past its lease
        evidence.workflows[0].steps[0].output_token = Some(1);
        let found = violated(&evidence);
        assert!(found.contains(&INVARIANTS[2]), "{found:?}");
    }

    /// Broken variant 2: the leader expires a lease in memory and reassigns without proposing
    /// Expire, so the agent still holding the lease (it kept renewing) is never fenced: both
    /// attempts run to their end, overlapping.
    #[test]
    fn catches_a_lease_expired_outside_the_log() {
        let mut evidence = clean();
        evidence.journal[0].end_ms = Some(180); // token 1 was never fenced, ran to completion
        let found = violated(&evidence);
        assert_eq!(found, vec![INVARIANTS[5]]);
        // The same overlap while agent-1 was SIGSTOPped is a zombie: counted, not a violation.
        evidence.zombie_windows.push(("agent-1".into(), 50, 2_000));
        let verdict = check(&evidence);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.zombie_overlaps, 1);
    }

    /// Broken variant 3: the log store acknowledges an append before the WAL sync; every node
    /// is SIGKILLed and restarts without the entry, so a workflow the client was told about is
    /// gone (and a resubmission under its key may create another id).
    #[test]
    fn catches_an_append_acknowledged_before_sync() {
        let mut evidence = clean();
        evidence.requests.push(Request {
            key: "k2".into(),
            outcome: Outcome::Acked(2),
        });
        assert_eq!(violated(&evidence), vec![INVARIANTS[0]]);
        // The same key then resubmitted after the crash got a fresh id.
        evidence.workflows.push(FinalWorkflow {
            id: 3,
            key: "k2".into(),
            nonce: None,
            finished: true,
            cancelled: false,
            steps: vec![],
        });
        assert_eq!(violated(&evidence), vec![INVARIANTS[1]]);
    }

    #[test]
    fn catches_dependency_order_capacity_and_divergence() {
        let mut evidence = clean();
        evidence.journal[2].start_ms = 150; // b starts before a's accepted attempt ended
        evidence.replicas[2].state_hash = "abd".into();
        let found = violated(&evidence);
        assert!(found.contains(&INVARIANTS[4]), "{found:?}");
        assert!(found.contains(&INVARIANTS[8]), "{found:?}");
        let mut evidence = clean();
        evidence.journal[2].agent = "agent-2".into();
        evidence.journal[2].start_ms = 150;
        evidence.journal[2].end_ms = Some(160);
        evidence.workflows[0].steps[1].depends_on.clear();
        assert_eq!(violated(&evidence), vec![INVARIANTS[6]]);
    }

    #[test]
    fn catches_a_replica_that_never_came_back() {
        let mut evidence = clean();
        evidence.replicas.pop();
        assert_eq!(violated(&evidence), vec![INVARIANTS[8]]);
    }

    #[test]
    fn parses_the_journal_and_pairs_start_with_end() {
        let text = "start 1 a 1 agent-1 10\nstart 1 a 2 agent-2 20\nend 1 a 2 agent-2 30\n";
        let runs = parse_journal(text).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].end_ms, None);
        assert_eq!(runs[1].end_ms, Some(30));
        assert!(parse_journal("end 1 a 1 x 3\n").is_err());
    }
}
