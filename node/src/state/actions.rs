//! What operators do to a workflow besides cancelling it, and the workflow-wide timeout: pause
//! and resume ([`Command::Pause`]), retry ([`Command::Retry`]), and a workflow's `timeout`,
//! which `Tick` enforces.
//!
//! **Pause.** A paused workflow's ready steps wait outside the ready queue (so placement never
//! sees them, and `Assign` refuses them at apply); steps that become ready meanwhile (a
//! dependency finished, a backoff ended) join them there. Running steps finish. On resume each
//! waiting step's ready time moves on by the paused time, so its schedule-to-start deadline does
//! not count it, and the steps are queued again.
//!
//! **Retry.** A finished workflow runs again from the steps that failed, were cancelled or timed
//! out (or from one named step), each with every step that depends on it, directly or not.
//! Those steps keep their earlier attempts (the last one recorded as it ended) and start over:
//! new attempts, so new fencing tokens; every other step keeps its result, and its output is
//! what the rerun steps read. The workflow leaves the purge index and gets a new timeout.
//!
//! **Timeout.** A workflow with a `timeout` has a deadline, from submit or from its last retry;
//! running workflows with one are indexed by it (derived, like the ready deadlines), so a Tick
//! finds the due ones in O(log n) and ends each `timed_out`, as a cancel would.

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_proto::limits::RETRIES_PER_WORKFLOW_MAX;
use baton_proto::v1 as pb;
use imbl::OrdSet;

use super::command::{PauseCommand, Response, RetryCommand};
use super::ids::{StepIndex, WorkflowId};
use super::scheduling::{enqueue, ready_key};
use super::workflow::{AttemptOutcome, StepState, Workflow, WorkflowState};
use super::{ApplyCtx, ClusterState, Events};

/// Running workflows with a timeout, by deadline (derived: rebuilt on decode, checked by the
/// invariants).
pub(super) type Timeouts = OrdSet<(u64, WorkflowId)>;

impl ClusterState {
    /// [`Command::Pause`]: pause or resume.
    pub(super) fn pause(
        &mut self,
        ctx: ApplyCtx,
        cmd: PauseCommand,
        events: &mut Events,
    ) -> Response {
        let now_ms = self.now_ms;
        let id = cmd.workflow_id;
        let Some(workflow) = self.workflows.get(&id) else {
            return Response::NotFound { workflow_id: id };
        };
        let verb = if cmd.paused { "pause" } else { "resume" };
        if workflow.state.is_terminal() {
            return Response::Rejected {
                reason: format!(
                    "workflow {id} has finished ({}): there is nothing to {verb}",
                    baton_proto::names::workflow_state_name(workflow.state.to_proto() as i32)
                ),
            };
        }
        if (workflow.paused_at_ms != 0) == cmd.paused {
            return Response::Paused { changed: false };
        }
        let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("checked above"));
        workflow.revision = ctx.index;
        let ready: Vec<StepIndex> = (0..workflow.steps.len() as u32)
            .map(StepIndex)
            .filter(|s| workflow.steps[s.get()].state == StepState::Ready)
            .collect();
        let kind = if cmd.paused {
            for &step in &ready {
                let key = ready_key(workflow, step);
                self.ready.remove(&key);
                self.ready_index.remove(&key, &workflow.namespace);
            }
            // 0 means "not paused"; state time is never 0 once an entry has applied.
            workflow.paused_at_ms = now_ms.max(1);
            pb::EventKind::WorkflowPaused
        } else {
            let paused_at_ms = workflow.paused_at_ms;
            workflow.paused_at_ms = 0;
            for &step in &ready {
                // The time it waited while paused does not count: a step ready before the
                // pause moves on by the pause, one that became ready during it starts now.
                let run = &mut workflow.steps[step.get()];
                let waited_paused = now_ms.saturating_sub(run.ready_at_ms.max(paused_at_ms));
                run.ready_at_ms = run.ready_at_ms.saturating_add(waited_paused);
                enqueue(&mut self.ready, &mut self.ready_index, workflow, step);
            }
            pb::EventKind::WorkflowResumed
        };
        events.push(self.event(ctx, id, kind, |e| {
            e.workflow_state = pb::WorkflowState::Running as i32;
            e.actor = cmd.actor;
        }));
        Response::Paused { changed: true }
    }

    /// [`Command::Retry`].
    pub(super) fn retry(
        &mut self,
        ctx: ApplyCtx,
        cmd: RetryCommand,
        events: &mut Events,
    ) -> Response {
        let now_ms = self.now_ms;
        let id = cmd.workflow_id;
        let Some(workflow) = self.workflows.get(&id) else {
            return Response::NotFound { workflow_id: id };
        };
        if !workflow.state.is_terminal() {
            return Response::Rejected {
                reason: format!(
                    "workflow {id} is still running: only a finished workflow can be retried \
                     (cancel it first)"
                ),
            };
        }
        if let Some(lease_ms) = self.drained_lease_of(id) {
            return Response::Rejected {
                reason: format!(
                    "workflow {id} was stopped while a step ran, and its agent has not shown it \
                     stopped yet (an agent cut off from the cluster stops it when its {} lease \
                     runs out): retry in a moment",
                    baton_proto::spec::format_duration_ms(lease_ms)
                ),
            };
        }
        if workflow.retries >= RETRIES_PER_WORKFLOW_MAX {
            return Response::Rejected {
                reason: format!(
                    "workflow {id} was retried {} times already, the most one workflow may be: \
                     submit it anew",
                    workflow.retries
                ),
            };
        }
        let seeds: Vec<StepIndex> = if cmd.from_step.is_empty() {
            let seeds: Vec<StepIndex> = (0..workflow.steps.len() as u32)
                .map(StepIndex)
                .filter(|s| {
                    matches!(
                        workflow.steps[s.get()].state,
                        StepState::Failed | StepState::Cancelled
                    )
                })
                .collect();
            if seeds.is_empty() {
                return Response::Rejected {
                    reason: format!(
                        "workflow {id} has no failed, cancelled or timed-out step to run again \
                         (name a step to rerun it and every step after it)"
                    ),
                };
            }
            seeds
        } else {
            match workflow
                .spec
                .steps
                .iter()
                .position(|s| s.name == cmd.from_step)
            {
                Some(i) => vec![StepIndex(i as u32)],
                None => {
                    let names: Vec<&str> = workflow
                        .spec
                        .steps
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect();
                    return Response::Rejected {
                        reason: format!(
                            "workflow {id} has no step {:?}; its steps are {}",
                            cmd.from_step,
                            names.join(", ")
                        ),
                    };
                }
            }
        };
        let rerun = with_dependents(workflow, &seeds);
        // Running again counts against its namespace's quotas: one more running workflow, and
        // the rerun steps that are ready at once (those none of the others come before).
        if !self.quotas(&workflow.namespace).is_none() {
            let ready_at_once = rerun
                .iter()
                .filter(|s| {
                    !super::namespaces::is_wait(&workflow.spec.steps[s.get()])
                        && workflow.steps[s.get()]
                            .deps
                            .iter()
                            .all(|d| !rerun.contains(d))
                })
                .count() as u64;
            let namespace = workflow.namespace.clone();
            self.count_live_so_far(events);
            if let Some(over) =
                self.over_quota(&namespace, ready_at_once, false, Default::default())
            {
                return Response::OverQuota(over);
            }
        }
        // Out of the purge index under its finished key, before the key changes.
        self.purge_index_remove(id);
        let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("checked above"));
        workflow.state = WorkflowState::Running;
        workflow.retries += 1;
        workflow.finished_at_ms = 0;
        workflow.reason.clear();
        workflow.revision = ctx.index;
        workflow.paused_at_ms = 0;
        workflow.deadline_ms = match workflow.spec.timeout_ms {
            0 => 0,
            timeout => now_ms.saturating_add(timeout),
        };
        let mut names = Vec::with_capacity(rerun.len());
        for &step in &rerun {
            names.push(workflow.spec.steps[step.get()].name.clone());
            let run = &mut workflow.steps[step.get()];
            // The attempt it ended with, if it ran and is not among them already (a retried
            // failure, or a step cancelled before its next attempt), joins the earlier ones.
            let recorded = run
                .earlier
                .last()
                .is_some_and(|e| e.attempt_id == run.attempt_id);
            if run.attempts > 0 && !recorded {
                let outcome = match run.state {
                    StepState::Succeeded => AttemptOutcome::Succeeded,
                    StepState::Cancelled => AttemptOutcome::Cancelled,
                    _ => AttemptOutcome::Failed,
                };
                run.end_attempt(outcome);
            }
            run.state = StepState::Waiting;
            run.failures = 0;
            run.lease_expiries = 0;
            run.ready_at_ms = 0;
            run.started_at_ms = 0;
            run.finished_at_ms = 0;
            run.retry_at_ms = 0;
            run.output.clear();
            run.error.clear();
            run.exit_code = None;
        }
        let message = format!("running again: {}", names.join(", "));
        events.push(self.event(ctx, id, pb::EventKind::WorkflowRetried, |e| {
            e.workflow_state = pb::WorkflowState::Running as i32;
            e.message = message;
            e.actor = cmd.actor;
        }));
        // Running again takes its concurrency key again, or waits for it.
        let workflow = self.workflows[&id].clone();
        let waits = self.take_workflow_key(&workflow);
        if waits {
            Arc::make_mut(self.workflows.get_mut(&id).expect("exists")).waiting_for_key = true;
            events.push(self.key_waiting_event(ctx, &self.workflows[&id]));
        }
        // Roots start now; the others once their dependencies are done, as after any step's
        // end (the dependencies that stay finished count as just finished).
        let rerun_set: BTreeSet<StepIndex> = rerun.iter().copied().collect();
        let mut finished_deps = BTreeSet::new();
        for &step in &rerun {
            let workflow = self.workflows.get_mut(&id).expect("exists");
            let workflow = Arc::make_mut(workflow);
            if workflow.steps[step.get()].deps.is_empty() {
                let run = &mut workflow.steps[step.get()];
                run.state = StepState::Ready;
                run.ready_at_ms = now_ms;
                let name = workflow.spec.steps[step.get()].name.clone();
                enqueue(&mut self.ready, &mut self.ready_index, workflow, step);
                events.push(self.event(ctx, id, pb::EventKind::StepReady, |e| {
                    e.step = name;
                    e.step_state = pb::StepState::Ready as i32;
                }));
            } else {
                finished_deps.extend(
                    workflow.steps[step.get()]
                        .deps
                        .iter()
                        .filter(|d| !rerun_set.contains(d)),
                );
            }
        }
        for dep in finished_deps {
            self.step_finished(ctx, id, dep, events);
        }
        // Running, or already over again: every rerun step skipped at once (a rerun step whose
        // condition its finished dependencies rule out).
        let state = self.workflows[&id].state;
        Response::Retried {
            steps: names,
            state,
        }
    }

    /// Ends every running workflow whose deadline has passed by the state's time (in a Tick).
    pub(super) fn time_out_due(&mut self, ctx: ApplyCtx, events: &mut Events) {
        let now_ms = self.now_ms;
        while let Some(&(deadline_ms, id)) = self.timeouts.get_min()
            && deadline_ms <= now_ms
        {
            self.timeouts.remove(&(deadline_ms, id));
            let Some(workflow) = self.workflows.get(&id) else {
                continue;
            };
            if workflow.state.is_terminal() {
                continue;
            }
            let reason = format!(
                "timed out: still running {} after it started (its timeout)",
                baton_proto::spec::format_duration_ms(workflow.spec.timeout_ms)
            );
            self.end_workflow(
                ctx,
                id,
                WorkflowState::TimedOut,
                reason,
                String::new(),
                events,
            );
        }
    }

    /// Whether a running workflow's deadline has passed by `now_ms`. O(log n).
    pub fn timeout_due(&self, now_ms: u64) -> bool {
        self.timeouts
            .get_min()
            .is_some_and(|(deadline, _)| *deadline <= now_ms)
    }

    /// The timeout index as the workflows say it should be.
    pub(super) fn derive_timeouts(&self) -> Timeouts {
        self.workflows
            .values()
            .filter(|w| !w.state.is_terminal() && w.deadline_ms != 0)
            .map(|w| (w.deadline_ms, w.id))
            .collect()
    }
}

/// `seeds` and every step that depends on one of them, directly or not, in spec order.
fn with_dependents(workflow: &Workflow, seeds: &[StepIndex]) -> Vec<StepIndex> {
    let mut marked = BTreeSet::new();
    let mut stack: Vec<StepIndex> = seeds.to_vec();
    while let Some(step) = stack.pop() {
        if marked.insert(step) {
            stack.extend(workflow.steps[step.get()].dependents.iter().copied());
        }
    }
    marked.into_iter().collect()
}
