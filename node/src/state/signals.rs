//! `wait` steps: approvals and other signals from outside ([`Command::Signal`]).
//!
//! A wait step runs on no agent. When one becomes ready (however: submit, a dependency done, a
//! retry), it leaves the ready queue at once, in the same command, and waits in state
//! `AwaitingSignal`: [`ClusterState::await_signals`] runs after every command, over the
//! `STEP_READY` events that command derived. A `Signal` then finishes it: succeeded with the
//! signal's data as its output, or failed when rejected; past the step's `timeout` a Tick fails
//! it. Its dependents then go on as after any step's end. Waiting steps with a timeout are indexed
//! by deadline (derived, like the other indexes), so a Tick finds the due ones in O(log n).

use std::sync::Arc;

use baton_proto::limits::OUTPUT_BYTES_MAX;
use baton_proto::v1 as pb;
use imbl::OrdSet;

use super::command::{Response, SignalCommand};
use super::ids::{StepIndex, WorkflowId};
use super::scheduling::{last_line, ready_key, truncate_utf8};
use super::workflow::{StepState, Workflow};
use super::{ApplyCtx, ClusterState, Events};

/// Waiting steps with a timeout: (deadline, workflow, step).
pub(super) type SignalDeadlines = OrdSet<(u64, WorkflowId, StepIndex)>;

/// The signal `step` of `workflow` waits for and its timeout, if it is a wait step.
fn wait_of(workflow: &Workflow, step: StepIndex) -> Option<&pb::WaitTask> {
    match &workflow.spec.steps[step.get()].task {
        Some(pb::step_spec::Task::Wait(wait)) => Some(wait),
        _ => None,
    }
}

/// A waiting step's deadline, if its wait has a timeout.
fn deadline(workflow: &Workflow, step: StepIndex) -> Option<u64> {
    let wait = wait_of(workflow, step)?;
    (wait.timeout_ms != 0).then(|| {
        workflow.steps[step.get()]
            .ready_at_ms
            .saturating_add(wait.timeout_ms)
    })
}

impl ClusterState {
    /// Turns every wait step made ready by the command whose events start at `start` into a
    /// step awaiting its signal (see the module header).
    pub(super) fn await_signals(&mut self, ctx: ApplyCtx, start: usize, events: &mut Events) {
        let ready: Vec<(WorkflowId, String)> = events[start..]
            .iter()
            .filter(|e| e.kind() == pb::EventKind::StepReady)
            .map(|e| (WorkflowId(e.workflow_id), e.step.clone()))
            .collect();
        for (id, name) in ready {
            let Some(workflow) = self.workflows.get(&id) else {
                continue;
            };
            let Some(i) = workflow.spec.steps.iter().position(|s| s.name == name) else {
                continue;
            };
            let step = StepIndex(i as u32);
            let Some(wait) = wait_of(workflow, step) else {
                continue;
            };
            if workflow.steps[i].state != StepState::Ready {
                continue;
            }
            let message = if wait.timeout_ms == 0 {
                format!(
                    "waiting for signal {:?} (baton signal {id} {name})",
                    wait.signal
                )
            } else {
                format!(
                    "waiting for signal {:?} (baton signal {id} {name}), at most {}",
                    wait.signal,
                    baton_proto::spec::format_duration_ms(wait.timeout_ms)
                )
            };
            let key = ready_key(workflow, step);
            self.ready.remove(&key);
            self.ready_index.remove(&key, &workflow.namespace);
            let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("checked above"));
            workflow.revision = ctx.index;
            workflow.steps[i].state = StepState::AwaitingSignal;
            if let Some(at) = deadline(workflow, step) {
                self.signal_deadlines.insert((at, id, step));
            }
            events.push(self.event(ctx, id, pb::EventKind::StepAwaitingSignal, |e| {
                e.step = name;
                e.step_state = pb::StepState::AwaitingSignal as i32;
                e.message = message;
            }));
        }
    }

    /// [`Command::Signal`].
    pub(super) fn signal(
        &mut self,
        ctx: ApplyCtx,
        cmd: SignalCommand,
        events: &mut Events,
    ) -> Response {
        let id = cmd.workflow_id;
        let Some(workflow) = self.workflows.get(&id) else {
            return Response::NotFound { workflow_id: id };
        };
        let Some(i) = workflow.spec.steps.iter().position(|s| s.name == cmd.step) else {
            let names: Vec<&str> = workflow
                .spec
                .steps
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Response::Rejected {
                reason: format!(
                    "workflow {id} has no step {:?}; its steps are {}",
                    cmd.step,
                    names.join(", ")
                ),
            };
        };
        let step = StepIndex(i as u32);
        let run = &workflow.steps[i];
        if run.state != StepState::AwaitingSignal {
            let why = if wait_of(workflow, step).is_none() {
                "it is not a wait step".to_owned()
            } else {
                format!(
                    "it is {}",
                    baton_proto::names::step_state_name(run.state.to_proto() as i32)
                )
            };
            return Response::Rejected {
                reason: format!(
                    "step {:?} of workflow {id} is not waiting for a signal: {why}",
                    cmd.step
                ),
            };
        }
        if let Some(at) = deadline(workflow, step) {
            self.signal_deadlines.remove(&(at, id, step));
        }
        let signal = wait_of(workflow, step)
            .map(|w| w.signal.clone())
            .unwrap_or_default();
        let by = if cmd.actor.is_empty() {
            String::new()
        } else {
            format!(" by {}", cmd.actor)
        };
        let data = truncate_utf8(cmd.data, OUTPUT_BYTES_MAX);
        let now_ms = self.now_ms;
        let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("checked above"));
        workflow.revision = ctx.index;
        let run = &mut workflow.steps[i];
        run.finished_at_ms = now_ms;
        let (state, message) = if cmd.reject {
            // Bounded like any step's error (the data alone may fill the bound).
            run.error = truncate_utf8(
                if data.is_empty() {
                    format!("signal {signal:?} rejected{by}")
                } else {
                    format!("signal {signal:?} rejected{by}: {data}")
                },
                OUTPUT_BYTES_MAX,
            );
            let message = if data.is_empty() {
                format!("signal {signal:?} rejected")
            } else {
                format!("signal {signal:?} rejected: {}", last_line(&data))
            };
            (StepState::Failed, message)
        } else {
            run.output = data;
            // Who signalled is the event's actor.
            (StepState::Succeeded, format!("signal {signal:?}"))
        };
        run.state = state;
        let output_bytes = run.output.len() as u64;
        events.push(self.event(ctx, id, pb::EventKind::StepFinished, |e| {
            e.step = cmd.step;
            e.step_state = state.to_proto() as i32;
            e.message = message;
            e.actor = cmd.actor;
            e.output_bytes = output_bytes;
        }));
        self.step_finished(ctx, id, step, events);
        Response::Signalled
    }

    /// Fails every waiting step whose timeout has passed by the state's time (in a Tick).
    pub(super) fn expire_signals(&mut self, ctx: ApplyCtx, events: &mut Events) {
        let now_ms = self.now_ms;
        while let Some(&(at, id, step)) = self.signal_deadlines.get_min()
            && at <= now_ms
        {
            self.signal_deadlines.remove(&(at, id, step));
            let Some(workflow) = self.workflows.get(&id) else {
                continue;
            };
            if workflow.steps[step.get()].state != StepState::AwaitingSignal {
                continue;
            }
            let Some(wait) = wait_of(workflow, step) else {
                continue;
            };
            let error = format!(
                "no signal {:?} within {}",
                wait.signal,
                baton_proto::spec::format_duration_ms(wait.timeout_ms)
            );
            let name = workflow.spec.steps[step.get()].name.clone();
            let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("checked above"));
            workflow.revision = ctx.index;
            let run = &mut workflow.steps[step.get()];
            run.state = StepState::Failed;
            run.finished_at_ms = now_ms;
            run.error = error.clone();
            events.push(self.event(ctx, id, pb::EventKind::StepFinished, |e| {
                e.step = name;
                e.step_state = pb::StepState::Failed as i32;
                e.message = error;
            }));
            self.step_finished(ctx, id, step, events);
        }
    }

    /// Whether a waiting step's timeout has passed by `now_ms`. O(log n).
    pub fn signal_timeout_due(&self, now_ms: u64) -> bool {
        self.signal_deadlines
            .get_min()
            .is_some_and(|(at, _, _)| *at <= now_ms)
    }

    /// Takes a waiting step out of the deadline index (its workflow ended).
    pub(super) fn forget_signal_deadline(&mut self, id: WorkflowId, step: StepIndex) {
        if let Some(workflow) = self.workflows.get(&id)
            && let Some(at) = deadline(workflow, step)
        {
            self.signal_deadlines.remove(&(at, id, step));
        }
    }

    /// The deadline index as the waiting steps say it should be.
    pub(super) fn derive_signal_deadlines(&self) -> SignalDeadlines {
        let mut index = SignalDeadlines::default();
        for workflow in self.workflows.values() {
            for (i, run) in workflow.steps.iter().enumerate() {
                let step = StepIndex(i as u32);
                if run.state == StepState::AwaitingSignal
                    && let Some(at) = deadline(workflow, step)
                {
                    index.insert((at, workflow.id, step));
                }
            }
        }
        index
    }
}
