//! The history checks: what clients saw while the faults went on (key-less submits, reads, the
//! Watch stream, cancels), held against the workflows' histories the cluster gives at the end
//! and against the steps' own journal. Pure, like the rest of the checker.

use std::collections::{BTreeMap, BTreeSet};

use crate::checker::{Evidence, Outcome};

/// `EventKind` values the checks read (baton.v1.EventKind).
pub mod kind {
    pub const WORKFLOW_FINISHED: i32 = 2;
    pub const STEP_ASSIGNED: i32 = 4;
    pub const STEP_LEASE_EXPIRED: i32 = 7;
    pub const WORKFLOW_PURGED: i32 = 10;
    pub const WORKFLOW_RETRIED: i32 = 13;
}

/// How long after its lease's expiry (in the cluster's time) a step may still record its end:
/// the journal's clock and the leader's are the same machine's, read a moment apart.
pub const EXPIRY_TOLERANCE_MS: u64 = 100;

/// One event of a workflow, as its history holds it or as a watch delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    pub workflow: u64,
    pub kind: i32,
    pub step: String,
    pub attempt_id: u64,
    pub time_ms: u64,
    /// WORKFLOW_FINISHED: how it ended (baton.v1.WorkflowState).
    pub workflow_state: i32,
}

/// `WorkflowState::Cancelled`.
pub const CANCELLED: i32 = 5;

/// A submit sent with no idempotency key (at most once), known by a nonce in its labels.
#[derive(Clone, Debug)]
pub struct KeylessRequest {
    pub nonce: String,
    pub outcome: Outcome,
}

/// A linearizable read of one workflow on one node: when it was sent and answered (the
/// harness's clock, which also times the acknowledgements), and the workflow's revision (the
/// log index of its last change), `None` for NOT_FOUND. Reads that failed are not kept.
#[derive(Clone, Debug)]
pub struct Read {
    pub workflow: u64,
    pub node: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub revision: Option<u64>,
}

/// What one of the harness's watches of every workflow delivered, from index `from` on.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    /// Which watch: one that fails over between nodes, or one that stays with a node.
    pub name: String,
    pub from: u64,
    pub events: Vec<Event>,
    /// Ranges of indexes [from, to) a node refused to replay, saying it no longer holds them:
    /// an honest refusal is not a gap.
    pub refused: Vec<(u64, u64)>,
    /// Times the stream was reopened (after a fault broke it).
    pub resumes: usize,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    pub keyless: Vec<KeylessRequest>,
    /// When each acknowledged submit was answered, by workflow (the first answer).
    pub acks: BTreeMap<u64, u64>,
    pub reads: Vec<Read>,
    /// Workflows whose cancel was acknowledged as cancelling them.
    pub cancels: BTreeSet<u64>,
    /// Every workflow's history at the end (GetHistory), by workflow.
    pub histories: BTreeMap<u64, Vec<Event>>,
    /// Workflows whose history could not be read at the end: left out of the checks that need
    /// it.
    pub unread: BTreeSet<u64>,
    pub watched: Vec<Watched>,
}

pub const KEYLESS: &str = "a key-less submit made at most one workflow";
pub const READ_SEES_ACK: &str = "a read sees every write acknowledged before it";
pub const READ_MONOTONIC: &str = "no read goes back in time";
pub const WATCH_WHOLE: &str = "a watch sees every event once, in order";
pub const ATTEMPTS_INCREASE: &str = "attempt ids only increase";
pub const LEASE_RESPECTED: &str = "no step runs past its lease's expiry";
pub const CANCEL_STOPS: &str = "a cancel ends its workflow, an ended one starts nothing";

/// Every violation of the history checks, with its invariant.
pub fn check(evidence: &Evidence) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let history = &evidence.history;
    keyless(evidence, &mut out);
    reads(history, &mut out);
    for watched in &history.watched {
        watch(history, watched, &mut out);
    }
    attempts(history, &mut out);
    leases(evidence, &mut out);
    cancels(evidence, &mut out);
    out
}

/// A key-less submit acknowledged made exactly its workflow, one refused made none, one whose
/// outcome was unknown made at most one.
fn keyless(evidence: &Evidence, out: &mut Vec<(&'static str, String)>) {
    let mut by_nonce: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for workflow in &evidence.workflows {
        if let Some(nonce) = &workflow.nonce {
            by_nonce.entry(nonce).or_default().push(workflow.id);
        }
    }
    for request in &evidence.history.keyless {
        let made = by_nonce
            .get(request.nonce.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let wrong = match request.outcome {
            Outcome::Acked(id) => made != [id],
            Outcome::Failed => !made.is_empty(),
            Outcome::Unknown => made.len() > 1,
        };
        if wrong {
            out.push((
                KEYLESS,
                format!(
                    "submit {} answered {:?}, the cluster holds workflows {made:?} for it",
                    request.nonce, request.outcome
                ),
            ));
        }
    }
}

/// A read sent after a workflow's submit was acknowledged finds it; a read sent after another
/// read of the same workflow was answered sees a revision at least as new.
fn reads(history: &History, out: &mut Vec<(&'static str, String)>) {
    let mut by_workflow: BTreeMap<u64, Vec<&Read>> = BTreeMap::new();
    for read in &history.reads {
        if read.revision.is_none()
            && let Some(acked_ms) = history.acks.get(&read.workflow)
            && *acked_ms < read.start_ms
        {
            out.push((
                READ_SEES_ACK,
                format!(
                    "workflow {} acknowledged at {acked_ms}, a read on node {} sent at {} did not \
                     find it",
                    read.workflow, read.node, read.start_ms
                ),
            ));
        }
        by_workflow.entry(read.workflow).or_default().push(read);
    }
    for (workflow, mut list) in by_workflow {
        list.sort_by_key(|r| r.start_ms);
        // The newest revision among reads answered before each read was sent: a sweep over the
        // answers in time order.
        let mut answered: Vec<&Read> = list.clone();
        answered.sort_by_key(|r| r.end_ms);
        let mut next = 0;
        let mut newest: Option<&Read> = None;
        for read in &list {
            while next < answered.len() && answered[next].end_ms < read.start_ms {
                let candidate = answered[next];
                if newest.is_none_or(|n| candidate.revision > n.revision) {
                    newest = Some(candidate);
                }
                next += 1;
            }
            if let Some(before) = newest
                && read.revision < before.revision
            {
                out.push((
                    READ_MONOTONIC,
                    format!(
                        "workflow {workflow}: node {} read revision {:?} at {}, after node {} had \
                         answered revision {:?} at {}",
                        read.node,
                        read.revision,
                        read.start_ms,
                        before.node,
                        before.revision,
                        before.end_ms
                    ),
                ));
            }
        }
    }
}

fn refused(watched: &Watched, index: u64) -> bool {
    watched
        .refused
        .iter()
        .any(|&(from, to)| index >= from && index < to)
}

/// The watch delivered indexes in order, and for every workflow exactly its history's events
/// below the last index it reached (that index may have been cut short when the watch was
/// stopped), but for ranges a node refused to replay.
fn watch(history: &History, watched: &Watched, out: &mut Vec<(&'static str, String)>) {
    let name = &watched.name;
    if let Some(pair) = watched.events.windows(2).find(|w| w[1].index < w[0].index) {
        out.push((
            WATCH_WHOLE,
            format!(
                "watch {name} delivered index {} after index {}",
                pair[1].index, pair[0].index
            ),
        ));
    }
    let Some(last) = watched.events.last().map(|e| e.index) else {
        return;
    };
    let kept = |e: &&Event| {
        e.index >= watched.from
            && e.index < last
            && e.kind != kind::WORKFLOW_PURGED
            && !refused(watched, e.index)
    };
    let mut seen: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for event in watched.events.iter().filter(kept) {
        seen.entry(event.workflow).or_default().push(event);
    }
    let workflows: BTreeSet<u64> = seen
        .keys()
        .chain(history.histories.keys())
        .copied()
        .collect();
    for workflow in workflows {
        if history.unread.contains(&workflow) {
            continue;
        }
        let expected: Vec<&Event> = history
            .histories
            .get(&workflow)
            .into_iter()
            .flatten()
            .filter(kept)
            .collect();
        let got = seen.get(&workflow).cloned().unwrap_or_default();
        if got == expected {
            continue;
        }
        let at = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        let what = match (got.get(at), expected.get(at)) {
            (Some(g), Some(e)) => format!(
                "event {at} was kind {} at index {} (step {:?}), its history has kind {} at index \
                 {} (step {:?})",
                g.kind, g.index, g.step, e.kind, e.index, e.step
            ),
            (None, Some(e)) => format!(
                "the watch missed kind {} at index {} (step {:?}) and {} after it",
                e.kind,
                e.index,
                e.step,
                expected.len() - at - 1
            ),
            (Some(g), None) => format!(
                "the watch delivered kind {} at index {} (step {:?}) beyond its history",
                g.kind, g.index, g.step
            ),
            (None, None) => unreachable!("the lists differ"),
        };
        out.push((
            WATCH_WHOLE,
            format!(
                "watch {name}, workflow {workflow}: {} events watched, {} in its history below \
                 index {last}: {what}",
                got.len(),
                expected.len()
            ),
        ));
    }
}

/// Every assignment's attempt id is above every id assigned at an earlier log index.
fn attempts(history: &History, out: &mut Vec<(&'static str, String)>) {
    let mut by_index: BTreeMap<u64, Vec<(u64, &Event)>> = BTreeMap::new();
    for event in history.histories.values().flatten() {
        if event.kind == kind::STEP_ASSIGNED {
            by_index
                .entry(event.index)
                .or_default()
                .push((event.attempt_id, event));
        }
    }
    let mut highest: Option<(u64, &Event)> = None;
    for list in by_index.values() {
        let lowest = list.iter().min_by_key(|(id, _)| *id).expect("not empty");
        if let Some((top, earlier)) = highest
            && lowest.0 <= top
        {
            out.push((
                ATTEMPTS_INCREASE,
                format!(
                    "attempt {} (workflow {} step {}) assigned at index {}, after attempt {top} \
                     (workflow {} step {}) at index {}",
                    lowest.0,
                    lowest.1.workflow,
                    lowest.1.step,
                    lowest.1.index,
                    earlier.workflow,
                    earlier.step,
                    earlier.index
                ),
            ));
        }
        let top = list.iter().max_by_key(|(id, _)| *id).expect("not empty");
        if highest.is_none_or(|(id, _)| top.0 > id) {
            highest = Some(*top);
        }
    }
}

/// An execution that ran to its end ended before its lease's expiry was applied: an agent
/// stops an attempt whose lease it cannot renew, so a step still running afterwards was told
/// its lease held by someone who could not promise it. A paused agent's steps are zombies.
fn leases(evidence: &Evidence, out: &mut Vec<(&'static str, String)>) {
    for event in evidence.history.histories.values().flatten() {
        if event.kind != kind::STEP_LEASE_EXPIRED {
            continue;
        }
        for execution in &evidence.journal {
            let Some(end) = execution.end_ms else {
                continue;
            };
            if execution.workflow != event.workflow
                || execution.step != event.step
                || execution.token != event.attempt_id
                || end <= event.time_ms + EXPIRY_TOLERANCE_MS
            {
                continue;
            }
            let zombie = evidence.zombie_windows.iter().any(|(agent, from, to)| {
                *agent == execution.agent && *from < end && *to > execution.start_ms
            });
            if !zombie {
                out.push((
                    LEASE_RESPECTED,
                    format!(
                        "workflow {} step {} attempt {} on {} ended at {end}, {} ms after its \
                         lease expired at index {}",
                        event.workflow,
                        event.step,
                        event.attempt_id,
                        execution.agent,
                        end - event.time_ms,
                        event.index
                    ),
                ));
            }
        }
    }
}

/// A workflow whose cancel was acknowledged ends cancelled, and no workflow starts a step once
/// it has ended (cancelled, or any other way), until a retry.
fn cancels(evidence: &Evidence, out: &mut Vec<(&'static str, String)>) {
    for workflow in &evidence.workflows {
        if evidence.history.cancels.contains(&workflow.id) && !workflow.cancelled {
            out.push((
                CANCEL_STOPS,
                format!(
                    "workflow {}: its cancel was acknowledged, it did not end cancelled",
                    workflow.id
                ),
            ));
        }
    }
    for (workflow, events) in &evidence.history.histories {
        let mut ended: Option<&Event> = None;
        for event in events {
            match event.kind {
                kind::WORKFLOW_FINISHED => ended = Some(event),
                kind::WORKFLOW_RETRIED => ended = None,
                kind::STEP_ASSIGNED => {
                    if let Some(end) = ended {
                        out.push((
                            CANCEL_STOPS,
                            format!(
                                "workflow {workflow}: step {} assigned at index {}, after the \
                                 workflow ended ({}) at index {}",
                                event.step,
                                event.index,
                                if end.workflow_state == CANCELLED {
                                    "cancelled"
                                } else {
                                    "not cancelled"
                                },
                                end.index
                            ),
                        ));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{Execution, FinalWorkflow};

    fn event(index: u64, workflow: u64, kind: i32, step: &str, attempt_id: u64) -> Event {
        Event {
            index,
            workflow,
            kind,
            step: step.into(),
            attempt_id,
            time_ms: index * 10,
            workflow_state: 0,
        }
    }

    fn workflow(id: u64) -> FinalWorkflow {
        FinalWorkflow {
            id,
            key: format!("k{id}"),
            nonce: None,
            finished: true,
            cancelled: false,
            steps: Vec::new(),
        }
    }

    /// Two workflows, each submitted, assigned, finished; watched whole; read in order.
    fn clean() -> Evidence {
        let mut evidence = Evidence {
            workflows: vec![workflow(1), workflow(2)],
            ..Evidence::default()
        };
        let history = &mut evidence.history;
        history.histories.insert(
            1,
            vec![
                event(3, 1, 1, "", 0),
                event(4, 1, kind::STEP_ASSIGNED, "a", 4),
                event(6, 1, 5, "a", 4),
            ],
        );
        history.histories.insert(
            2,
            vec![
                event(4, 2, 1, "", 0),
                event(5, 2, kind::STEP_ASSIGNED, "a", 5),
                event(7, 2, 5, "a", 5),
            ],
        );
        let mut all: Vec<Event> = history.histories.values().flatten().cloned().collect();
        all.sort_by_key(|e| e.index);
        all.push(event(8, 1, 2, "", 0));
        history.watched = vec![Watched {
            name: "failover".into(),
            from: 1,
            events: all,
            ..Watched::default()
        }];
        history.acks.insert(1, 100);
        history.reads = vec![
            Read {
                workflow: 1,
                node: 2,
                start_ms: 101,
                end_ms: 105,
                revision: Some(4),
            },
            Read {
                workflow: 1,
                node: 3,
                start_ms: 106,
                end_ms: 110,
                revision: Some(6),
            },
            // Overlapping the one before: either order is linearizable.
            Read {
                workflow: 1,
                node: 1,
                start_ms: 107,
                end_ms: 109,
                revision: Some(4),
            },
        ];
        evidence
    }

    fn violated(evidence: &Evidence) -> BTreeSet<&'static str> {
        check(evidence).into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check(&clean()), []);
    }

    #[test]
    fn catches_a_keyless_submit_made_twice_or_made_when_refused() {
        let mut evidence = clean();
        evidence.workflows[0].nonce = Some("n1".into());
        evidence.workflows[1].nonce = Some("n2".into());
        evidence.history.keyless = vec![
            KeylessRequest {
                nonce: "n1".into(),
                outcome: Outcome::Acked(1),
            },
            KeylessRequest {
                nonce: "n2".into(),
                outcome: Outcome::Unknown,
            },
            KeylessRequest {
                nonce: "n3".into(),
                outcome: Outcome::Unknown,
            },
        ];
        assert_eq!(check(&evidence), []);
        let mut twice = evidence.clone();
        twice.workflows[1].nonce = Some("n1".into());
        assert_eq!(violated(&twice), BTreeSet::from([KEYLESS]));
        let mut refused = evidence.clone();
        refused.history.keyless[1].outcome = Outcome::Failed;
        assert_eq!(violated(&refused), BTreeSet::from([KEYLESS]));
        let mut doubled_unknown = evidence;
        doubled_unknown.workflows[0].nonce = Some("n2".into());
        doubled_unknown.history.keyless.remove(0);
        assert_eq!(violated(&doubled_unknown), BTreeSet::from([KEYLESS]));
    }

    #[test]
    fn catches_a_stale_read_and_a_read_going_back() {
        let mut missed = clean();
        missed.history.reads[0].revision = None;
        assert_eq!(violated(&missed), BTreeSet::from([READ_SEES_ACK]));
        let mut back = clean();
        back.history.reads.push(Read {
            workflow: 1,
            node: 1,
            start_ms: 111,
            end_ms: 112,
            revision: Some(4),
        });
        assert_eq!(violated(&back), BTreeSet::from([READ_MONOTONIC]));
        // A read before the ack may miss it.
        let mut early = clean();
        early.history.reads[0].start_ms = 99;
        early.history.reads[0].revision = None;
        assert_eq!(check(&early), []);
    }

    #[test]
    fn catches_a_watch_gap_a_repeat_and_disorder_but_not_a_refused_range() {
        let mut gap = clean();
        gap.history.watched[0].events.retain(|e| e.index != 5);
        assert_eq!(violated(&gap), BTreeSet::from([WATCH_WHOLE]));
        let mut refused = gap.clone();
        refused.history.watched[0].refused.push((5, 6));
        assert_eq!(check(&refused), []);
        let mut repeat = clean();
        let again = repeat.history.watched[0].events[2].clone();
        repeat.history.watched[0].events.insert(3, again);
        assert_eq!(violated(&repeat), BTreeSet::from([WATCH_WHOLE]));
        let mut disorder = clean();
        disorder.history.watched[0].events.swap(1, 3);
        assert_eq!(violated(&disorder), BTreeSet::from([WATCH_WHOLE]));
        // The last index reached may be cut short.
        let mut cut = clean();
        cut.history.watched[0].events.pop();
        cut.history.watched[0].events.pop();
        assert_eq!(check(&cut), []);
    }

    #[test]
    fn catches_an_attempt_id_that_goes_back() {
        let mut evidence = clean();
        evidence.history.histories.get_mut(&2).unwrap().push(event(
            9,
            2,
            kind::STEP_ASSIGNED,
            "b",
            3,
        ));
        assert!(violated(&evidence).contains(ATTEMPTS_INCREASE));
    }

    #[test]
    fn catches_a_step_that_ran_past_its_lease_unless_its_agent_was_paused() {
        let mut evidence = clean();
        evidence.history.histories.get_mut(&1).unwrap().push(event(
            9,
            1,
            kind::STEP_LEASE_EXPIRED,
            "a",
            4,
        ));
        let ran = |end| Execution {
            workflow: 1,
            step: "a".into(),
            token: 4,
            agent: "agent-1".into(),
            start_ms: 10,
            end_ms: Some(end),
        };
        // Ended before the expiry (time 90), or killed: fine.
        evidence.journal = vec![ran(80)];
        let mut killed = ran(0);
        killed.end_ms = None;
        evidence.journal.push(killed);
        assert_eq!(check(&evidence), []);
        let mut late = evidence.clone();
        late.journal.push(ran(90 + EXPIRY_TOLERANCE_MS + 1));
        assert_eq!(violated(&late), BTreeSet::from([LEASE_RESPECTED]));
        late.zombie_windows.push(("agent-1".into(), 50, 300));
        assert_eq!(check(&late), []);
    }

    #[test]
    fn catches_a_cancel_that_did_not_end_its_workflow_and_a_start_after_the_end() {
        let mut evidence = clean();
        evidence.history.cancels.insert(1);
        assert_eq!(violated(&evidence), BTreeSet::from([CANCEL_STOPS]));
        evidence.workflows[0].cancelled = true;
        assert_eq!(check(&evidence), []);
        let mut end = event(4, 2, kind::WORKFLOW_FINISHED, "", 0);
        end.workflow_state = CANCELLED;
        let history = evidence.history.histories.get_mut(&2).unwrap();
        history.insert(1, end);
        assert!(violated(&evidence).contains(CANCEL_STOPS));
        let history = evidence.history.histories.get_mut(&2).unwrap();
        history.insert(2, event(4, 2, kind::WORKFLOW_RETRIED, "", 0));
        assert!(!violated(&evidence).contains(CANCEL_STOPS));
    }

    #[test]
    fn a_workflow_whose_history_was_not_read_is_left_out_of_the_watch_check() {
        let mut evidence = clean();
        evidence.history.histories.remove(&2);
        assert_eq!(violated(&evidence), BTreeSet::from([WATCH_WHOLE]));
        evidence.history.unread.insert(2);
        assert_eq!(check(&evidence), []);
    }
}
