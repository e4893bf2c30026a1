//! The report of a run: latencies and completions from the workflows' tracks, then the
//! submitters' counts, the resources used, and with `--kill-leader` the failover times.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use baton_client::proto::WorkflowState;
use hdrhistogram::Histogram;

use super::kill::failovers_ms;
use super::load::Submitters;
use super::options::Plan;
use super::report::{LatencySummary, Report, new_histogram, per_second, record};
use super::resources::Used;
use super::track::Track;

/// What a run measured besides the tracks.
pub struct Measured {
    /// From the first submit to the last client stopping.
    pub submit_seconds: f64,
    /// Each call's acknowledgement latency.
    pub acks: Histogram<u64>,
    /// `--kill-leader`: when each kill happened (ms since the epoch).
    pub kills: Vec<u64>,
    /// Every step assignment's time, any workflow's.
    pub assigned_ms: Vec<u64>,
    pub used: Used,
}

/// The whole report of a run.
pub fn report(
    tracks: &HashMap<u64, Track>,
    plan: &Plan,
    shared: &Submitters,
    measured: Measured,
) -> Report {
    let Measured {
        submit_seconds,
        acks,
        kills,
        assigned_ms,
        used,
    } = measured;
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().expect("not poisoned").clone();
    let mut report = summarise(tracks, plan);
    report.submitted = accepted + errors;
    report.accepted = accepted;
    report.submit_errors = errors;
    report.first_submit_error = first_error;
    report.submit_seconds = submit_seconds;
    report.workflows_accepted_per_second = per_second(accepted, submit_seconds);
    report.submit_ack = LatencySummary::of(&acks);
    report.nodes = used.nodes;
    if plan.kill_every.is_some() {
        let mut failover = new_histogram();
        let times = failovers_ms(&kills, &assigned_ms);
        for ms in times.iter().flatten() {
            record(&mut failover, ms * 1000);
        }
        report.leader_kills = Some(kills.len() as u64);
        report.kills_without_assignment = Some(times.iter().filter(|t| t.is_none()).count() as u64);
        report.kill_to_assignment = Some(LatencySummary::of(&failover));
    }
    report.agents_cpu_percent = used.agents_cpu_percent;
    report.bench_cpu_percent = used.bench_cpu_percent;
    report
}

/// The latency and completion part of the report, from the tracks of the accepted workflows.
pub fn summarise(tracks: &HashMap<u64, Track>, plan: &Plan) -> Report {
    let mut to_start: Histogram<u64> = new_histogram();
    let mut to_end: Histogram<u64> = new_histogram();
    let (mut succeeded, mut failed, mut unfinished, mut steps) = (0, 0, 0, 0);
    let (mut first_ms, mut last_ms) = (u64::MAX, 0u64);
    for track in tracks.values() {
        steps += track.steps_finished;
        if let Some(submitted) = track.submitted_ms {
            first_ms = first_ms.min(submitted);
            if let Some(assigned) = track.first_assigned_ms {
                record(&mut to_start, assigned.saturating_sub(submitted) * 1000);
            }
            if let Some((end, _)) = track.finished {
                record(&mut to_end, end.saturating_sub(submitted) * 1000);
            }
        }
        match track.finished {
            Some((end, state)) => {
                last_ms = last_ms.max(end);
                if state == WorkflowState::Succeeded {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
            None => unfinished += 1,
        }
    }
    let run_seconds = if last_ms >= first_ms {
        (last_ms - first_ms) as f64 / 1000.0
    } else {
        0.0
    };
    Report {
        shape: format!("{:?}", plan.shape).to_lowercase(),
        steps_per_workflow: plan.steps_per_workflow,
        distinct_specs: plan.distinct_specs,
        clients: plan.clients,
        batch: plan.batch,
        rate: plan.rate,
        submitted: 0,
        accepted: 0,
        submit_errors: 0,
        first_submit_error: None,
        submit_seconds: 0.0,
        workflows_accepted_per_second: 0.0,
        workflows_succeeded: succeeded,
        workflows_failed: failed,
        workflows_unfinished: unfinished,
        steps_completed: steps,
        run_seconds,
        steps_completed_per_second: per_second(steps, run_seconds),
        submit_ack: LatencySummary::of(&new_histogram()),
        submit_to_start: LatencySummary::of(&to_start),
        submit_to_end: LatencySummary::of(&to_end),
        nodes: Vec::new(),
        agents_cpu_percent: None,
        bench_cpu_percent: 0.0,
        leader_kills: None,
        kills_without_assignment: None,
        kill_to_assignment: None,
        etcd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::options::test_plan as plan;
    use baton_client::proto::{EventKind, WorkflowEvent};

    fn event(kind: EventKind, workflow_id: u64, time_ms: u64) -> WorkflowEvent {
        WorkflowEvent {
            workflow_id,
            time_ms,
            kind: kind as i32,
            workflow_state: WorkflowState::Succeeded as i32,
            ..WorkflowEvent::default()
        }
    }

    #[test]
    fn tracks_become_latencies_and_rates() {
        let plan = plan(&["--shape", "chain", "--steps", "2"]).unwrap();
        let mut tracks = HashMap::new();
        // Workflow 1: submitted at 1000, first step assigned at 1010 and 1030, finished at 1050.
        // Workflow 2: submitted at 1100, assigned at 1130, finished at 2000.
        // Workflow 3: submitted at 1200, never assigned.
        for (id, events) in [
            (
                1,
                vec![
                    event(EventKind::WorkflowSubmitted, 1, 1000),
                    event(EventKind::StepAssigned, 1, 1010),
                    event(EventKind::StepFinished, 1, 1020),
                    event(EventKind::StepAssigned, 1, 1030),
                    event(EventKind::StepFinished, 1, 1040),
                    event(EventKind::WorkflowFinished, 1, 1050),
                ],
            ),
            (
                2,
                vec![
                    event(EventKind::WorkflowSubmitted, 2, 1100),
                    event(EventKind::StepAssigned, 2, 1130),
                    event(EventKind::StepFinished, 2, 1900),
                    event(EventKind::WorkflowFinished, 2, 2000),
                ],
            ),
            (3, vec![event(EventKind::WorkflowSubmitted, 3, 1200)]),
        ] {
            let track: &mut Track = tracks.entry(id).or_default();
            events.iter().for_each(|e| track.apply(e));
        }
        assert_eq!(tracks[&1].first_assigned_ms, Some(1010));
        let r = summarise(&tracks, &plan);
        assert_eq!(
            (
                r.workflows_succeeded,
                r.workflows_failed,
                r.workflows_unfinished
            ),
            (1 + 1, 0, 1)
        );
        assert_eq!(r.steps_completed, 3);
        assert_eq!(r.run_seconds, 1.0);
        assert_eq!(r.steps_completed_per_second, 3.0);
        assert_eq!(r.submit_to_start.count, 2);
        assert!((r.submit_to_start.max_ms - 30.0).abs() < 0.05, "{r:?}");
        assert_eq!(r.submit_to_end.count, 2);
        assert!((r.submit_to_end.max_ms - 900.0).abs() < 1.0, "{r:?}");
        assert!((r.submit_to_end.p50_ms - 50.0).abs() < 0.1, "{r:?}");
    }
}
