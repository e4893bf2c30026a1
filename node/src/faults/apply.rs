//! The broken behaviours that concern applied entries, wrapped around [`ClusterState::apply`]
//! from outside: the state itself is never broken, the wrapper changes what it is given (a
//! command rewritten or answered here) and what the node serves from it. Compiled only with the
//! `fault-injection` feature; every replica runs the same wrapper over the same log, so replicas
//! stay alike unless the broken behaviour itself makes them differ (that is the point of
//! [`Broken::ExpireOffLog`]).
//!
//! Its bookkeeping (which step each attempt ran, the stale outputs it accepted) is in memory only:
//! a node that restarts or installs a snapshot starts it empty, as broken as before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use crate::state::scheduling::truncate_utf8;
use baton_proto::limits::OUTPUT_BYTES_MAX;
use baton_proto::v1 as pb;

use super::{Broken, active, expired_here};
use crate::state::{
    Applied, ApplyCtx, AttemptId, ClusterState, Command, CompleteCommand, LogEntry, Response,
    RetryCommand, SignalCommand, StepState, WorkflowId,
};

/// What the wrapper keeps between entries.
#[derive(Default)]
struct Notes {
    /// The workflow and step of every attempt ever assigned (the state forgets an attempt once
    /// it ends), so a stale report can be tied to its step.
    attempt_steps: BTreeMap<AttemptId, (WorkflowId, String)>,
    /// Outputs of stale reports accepted for a step that had already succeeded: what the node
    /// serves as that step's result.
    stale_outputs: BTreeMap<(WorkflowId, String), String>,
    /// [`Broken::DedupForgotten`]: the (namespace, idempotency key) of every submit this
    /// process applied, the only ones it deduplicates.
    keys_seen: BTreeSet<(String, String)>,
}

static NOTES: Mutex<Notes> = Mutex::new(Notes {
    attempt_steps: BTreeMap::new(),
    stale_outputs: BTreeMap::new(),
    keys_seen: BTreeSet::new(),
});

fn notes() -> MutexGuard<'static, Notes> {
    NOTES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies `entry` as the chosen broken behaviour would have the state apply it.
pub fn apply(state: &mut ClusterState, ctx: ApplyCtx, entry: LogEntry) -> Applied {
    let rewrites = [
        Broken::UnfencedReports,
        Broken::ExpireOffLog,
        Broken::RejectApproves,
        Broken::RetryFromStart,
        Broken::DedupForgotten,
    ];
    if !rewrites.into_iter().any(active) {
        return state.apply(ctx, entry);
    }
    let time_ms = entry.time_ms;
    match entry.command {
        // One command at a time, exactly as the state applies a batch (in order, with this
        // entry's index and time), so one of them can be answered here.
        Command::Batch(commands) => {
            let mut responses = Vec::with_capacity(commands.len());
            let mut events = Vec::new();
            for command in commands {
                let nested = matches!(command, Command::Batch(_));
                let command = if nested {
                    // Applied as the state would: refused as a batch inside a batch.
                    Command::Batch(vec![command])
                } else {
                    command
                };
                let mut applied = apply_one(state, ctx, LogEntry { time_ms, command });
                if nested && let Response::Batch(mut inner) = applied.response {
                    applied.response = inner.pop().unwrap_or(Response::Done);
                }
                responses.push(applied.response);
                events.append(&mut applied.events);
            }
            Applied {
                response: Response::Batch(responses),
                events,
            }
        }
        command => apply_one(state, ctx, LogEntry { time_ms, command }),
    }
}

fn apply_one(state: &mut ClusterState, ctx: ApplyCtx, entry: LogEntry) -> Applied {
    let command = match rewrite(state, entry.command) {
        Ok(command) => command,
        Err(response) => {
            return Applied {
                response,
                events: Vec::new(),
            };
        }
    };
    let applied = state.apply(
        ctx,
        LogEntry {
            time_ms: entry.time_ms,
            command,
        },
    );
    let mut notes = notes();
    for event in &applied.events {
        if event.kind == pb::EventKind::StepAssigned as i32 {
            notes.attempt_steps.insert(
                AttemptId(event.attempt_id),
                (WorkflowId(event.workflow_id), event.step.clone()),
            );
        }
    }
    applied
}

/// The command the state is given instead, or the answer given without it.
fn rewrite(state: &ClusterState, command: Command) -> Result<Command, Response> {
    match command {
        // Only the leader that decided an expiry applies it: the others keep the lease.
        Command::ExpireLeases { attempts } if active(Broken::ExpireOffLog) => {
            Ok(Command::ExpireLeases {
                attempts: attempts.into_iter().filter(|a| expired_here(a.0)).collect(),
            })
        }
        Command::Complete(report) if active(Broken::UnfencedReports) => unfenced(state, report),
        // The rejection is read as an approval.
        Command::Signal(signal) if active(Broken::RejectApproves) && signal.reject => {
            Ok(Command::Signal(SignalCommand {
                reject: false,
                ..signal
            }))
        }
        // A key this process has not applied since it started is not looked up: the submit
        // goes in without it, as a new workflow.
        Command::Submit(mut submit)
            if active(Broken::DedupForgotten) && !submit.idempotency_key.is_empty() =>
        {
            let seen = (submit.namespace.clone(), submit.idempotency_key.clone());
            let forgotten = !notes().keys_seen.contains(&seen)
                && state
                    .workflow_for_key(&submit.namespace, &submit.idempotency_key)
                    .is_some();
            notes().keys_seen.insert(seen);
            if forgotten {
                submit.idempotency_key.clear();
            }
            Ok(Command::Submit(submit))
        }
        // The rerun starts at the workflow's first step, whatever had succeeded.
        Command::Retry(retry) if active(Broken::RetryFromStart) => {
            let first = state
                .workflow(retry.workflow_id)
                .and_then(|w| w.spec.steps.first().map(|s| s.name.clone()));
            Ok(Command::Retry(RetryCommand {
                from_step: first.unwrap_or(retry.from_step),
                ..retry
            }))
        }
        command => Ok(command),
    }
}

/// A report for an attempt that is no longer live is taken for its step anyway: as the current
/// attempt's result while one runs, or as the result of a step that already succeeded.
fn unfenced(state: &ClusterState, mut report: CompleteCommand) -> Result<Command, Response> {
    if state.live_attempt(report.attempt_id).is_some() {
        return Ok(Command::Complete(report));
    }
    let mut notes = notes();
    let Some((workflow_id, step_name)) = notes.attempt_steps.get(&report.attempt_id).cloned()
    else {
        return Ok(Command::Complete(report));
    };
    let Some(workflow) = state.workflow(workflow_id) else {
        return Ok(Command::Complete(report));
    };
    let Some(step) = workflow.spec.steps.iter().position(|s| s.name == step_name) else {
        return Ok(Command::Complete(report));
    };
    let run = &workflow.steps[step];
    if let Some(live) = state.live_attempt(run.attempt_id) {
        report.attempt_id = run.attempt_id;
        report.agent_id = live.agent_id;
        return Ok(Command::Complete(report));
    }
    if run.state == StepState::Succeeded && report.success {
        notes.stale_outputs.insert(
            (workflow_id, step_name),
            truncate_utf8(report.output, OUTPUT_BYTES_MAX),
        );
        return Err(Response::Completed);
    }
    Ok(Command::Complete(report))
}

/// The outputs of stale reports accepted for steps that had already succeeded, served in their
/// place.
pub fn serve(workflow: &mut pb::Workflow) {
    let notes = notes();
    for step in &mut workflow.steps {
        if let Some(output) = notes
            .stale_outputs
            .get(&(WorkflowId(workflow.id), step.name.clone()))
        {
            step.output.clone_from(output);
        }
    }
}
