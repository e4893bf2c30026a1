//! Reading and changing one workflow or many: `baton get`, `list`, `cancel`, `pause`, `resume`,
//! `retry`, `watch`, `logs` and `history`.

use baton_client::output::{self, EventColumns};
use baton_client::proto::{ListRequest, ReadConsistency, Workflow, WorkflowState};
use baton_client::{Client, WatchUpdate, WorkflowWatch};
use futures::StreamExt;
use serde_json::Value;

use super::printer::Printer;
use crate::cli::args::{
    CancelArgs, GetArgs, HistoryArgs, ListArgs, LogsArgs, RetryArgs, SignalArgs, WatchArgs,
};
use crate::cli::failure::{CallKind, Failure, client_failure};

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// Words a failed read of workflow `id`: NOT_FOUND as the node says it (a purged workflow's
/// answer says when it was purged).
fn read_failure(id: u64) -> impl FnOnce(baton_client::ClientError) -> anyhow::Error {
    move |error| {
        if error.code() == Some(tonic::Code::NotFound) {
            let said = error.status().map(|s| s.message()).unwrap_or_default();
            Failure::failed(if said.is_empty() {
                format!("workflow {id} not found")
            } else {
                said.to_string()
            })
        } else {
            client_failure(error, CallKind::Read, Some(&format!("workflow {id}")), None)
        }
    }
}

pub(super) async fn get(client: &Client, out: &Printer, args: GetArgs) -> anyhow::Result<()> {
    let workflow = client
        .get(args.id, consistency(args.stale))
        .await
        .map_err(read_failure(args.id))?;
    out.print(
        || output::workflow_json(&workflow),
        || output::render_workflow(&workflow),
    )
}

pub(super) async fn logs(client: &Client, out: &Printer, args: LogsArgs) -> anyhow::Result<()> {
    let workflow = client
        .get_with_attempts(args.id, &args.step)
        .await
        .map_err(read_failure(args.id))?;
    let Some(step) = workflow.steps.iter().find(|s| s.name == args.step) else {
        let names: Vec<&str> = workflow.steps.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::failed(format!(
            "workflow {} has no step '{}'; its steps are {}",
            args.id,
            args.step,
            names.join(", ")
        )));
    };
    let view = output::choose_attempt(step, args.attempt).map_err(Failure::failed)?;
    out.print(
        || output::attempt_json(args.id, &step.name, &view),
        || output::render_attempt(args.id, &step.name, &view),
    )
}

/// Words a failed write to workflow `id`: NOT_FOUND and FAILED_PRECONDITION as the node says
/// them (purged, finished, still running), others with `hint`. An outcome that is unknown comes
/// first, whatever the last attempt answered: after a first attempt that may have applied, a
/// repeat refused with FAILED_PRECONDITION ("still running") may be refused because of it.
fn write_failure(id: u64, hint: String) -> impl FnOnce(baton_client::ClientError) -> anyhow::Error {
    move |error| match error.code() {
        _ if error.outcome() == baton_client::Outcome::Unknown => client_failure(
            error,
            CallKind::Write,
            Some(&format!("workflow {id}")),
            Some(hint),
        ),
        Some(tonic::Code::NotFound) => read_failure(id)(error),
        Some(tonic::Code::FailedPrecondition) => Failure::failed(
            error
                .status()
                .map(|s| s.message().to_string())
                .unwrap_or_default(),
        ),
        _ => client_failure(
            error,
            CallKind::Write,
            Some(&format!("workflow {id}")),
            Some(hint),
        ),
    }
}

pub(super) async fn pause(
    client: &Client,
    out: &Printer,
    id: u64,
    paused: bool,
) -> anyhow::Result<()> {
    let verb = if paused { "pause" } else { "resume" };
    let response = client.pause(id, paused).await.map_err(write_failure(
        id,
        format!("run `baton {verb} {id}` again (it is safe to repeat)"),
    ))?;
    let done = if paused { "paused" } else { "resumed" };
    out.print(
        || serde_json::json!({ "workflow_id": id, "paused": paused, "changed": response.changed }),
        || match (response.changed, paused) {
            (true, _) => format!("workflow {id} {done}"),
            (false, true) => format!("workflow {id} was already paused"),
            (false, false) => format!("workflow {id} was not paused"),
        },
    )
}

pub(super) async fn retry(client: &Client, out: &Printer, args: RetryArgs) -> anyhow::Result<()> {
    let id = args.id;
    let response = client
        .retry(id, args.from.unwrap_or_default())
        .await
        .map_err(write_failure(
            id,
            format!(
                "see `baton history {id}`: a retry that went through shows as workflow_retried; \
                 if it did not, run `baton retry {id}` again"
            ),
        ))?;
    let state = output::workflow_state_name(response.state);
    out.print(
        || serde_json::json!({ "workflow_id": id, "steps": response.steps, "state": state }),
        || {
            let steps = response.steps.join(", ");
            if response.state == WorkflowState::Running as i32 {
                format!("workflow {id} running again: {steps}")
            } else {
                // Every rerun step was skipped at once: its dependencies rule it out.
                format!("workflow {id}: {steps} skipped again (their conditions do not hold); it is {state}")
            }
        },
    )
}

/// `--data` must be JSON (a value, an object, a string in quotes).
pub(super) fn check_signal_data(args: &SignalArgs) -> anyhow::Result<()> {
    if let Some(data) = &args.data {
        serde_json::from_str::<Value>(data).map_err(|error| {
            Failure::usage(format!(
                "--data: not JSON ({error}); quote a string as '\"text\"'"
            ))
        })?;
    }
    Ok(())
}

pub(super) async fn signal(client: &Client, out: &Printer, args: SignalArgs) -> anyhow::Result<()> {
    let id = args.id;
    client
        .signal(id, &args.step, args.data.unwrap_or_default(), args.reject)
        .await
        .map_err(write_failure(
            id,
            format!(
                "see `baton get {id}`: a signal that went through finished the step, and \
                 sending it again is then refused"
            ),
        ))?;
    let done = if args.reject { "rejected" } else { "signalled" };
    out.print(
        || serde_json::json!({ "workflow_id": id, "step": args.step, "rejected": args.reject }),
        || format!("workflow {id} step {}: {done}", args.step),
    )
}

pub(super) async fn history(
    client: &Client,
    out: &Printer,
    args: HistoryArgs,
) -> anyhow::Result<()> {
    let events = client
        .history(args.id, consistency(args.stale))
        .await
        .map_err(read_failure(args.id))?;
    out.print(
        || Value::Array(events.iter().map(output::event_json).collect()),
        || output::render_history(&events),
    )
}

pub(super) async fn list(client: &Client, out: &Printer, args: ListArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return out.print(
            || Value::Array(Vec::new()),
            || output::render_workflow_list(&[]),
        );
    }
    let request = ListRequest {
        all_namespaces: args.all_namespaces,
        namespace: match args.all_namespaces {
            true => String::new(),
            false => client.config().namespace.clone(),
        },
        states: args.state.iter().map(|state| *state as i32).collect(),
        name_prefix: args.name_prefix.unwrap_or_default(),
        labels: args.labels.into_iter().collect(),
        // No bigger pages than asked for; otherwise the server's default.
        page_size: args.limit.map_or(0, |limit| limit.min(1000) as u32),
        page_token: String::new(),
        consistency: consistency(args.stale) as i32,
        schedule: args.schedule.unwrap_or_default(),
    };
    let mut stream = Box::pin(client.list_all(request));
    let mut workflows: Vec<Workflow> = Vec::new();
    while let Some(workflow) = stream.next().await {
        let workflow =
            workflow.map_err(|error| client_failure(error, CallKind::Read, None, None))?;
        workflows.push(workflow);
        if args.limit.is_some_and(|limit| workflows.len() >= limit) {
            break;
        }
    }
    out.print(
        || Value::Array(workflows.iter().map(output::workflow_json).collect()),
        || match args.all_namespaces {
            true => output::render_workflow_list_namespaced(&workflows),
            false => output::render_workflow_list(&workflows),
        },
    )
}

pub(super) async fn cancel(client: &Client, out: &Printer, args: CancelArgs) -> anyhow::Result<()> {
    let object = format!("workflow {}", args.id);
    let response = client.cancel(args.id, args.reason).await.map_err(|error| {
        if error.code() == Some(tonic::Code::NotFound) {
            return Failure::failed(format!("{object} not found"));
        }
        let hint = format!(
            "run `baton cancel {}` again (cancelling twice is harmless), or `baton get {}`",
            args.id, args.id
        );
        client_failure(error, CallKind::Write, Some(&object), Some(hint))
    })?;
    let state = output::workflow_state_name(response.state);
    out.print(
        || serde_json::json!({ "workflow_id": args.id, "state": state }),
        || {
            if response.state == WorkflowState::Cancelled as i32
                || response.state == WorkflowState::Running as i32
            {
                format!("{object}: {state}")
            } else {
                format!("{object} had already finished: {state}")
            }
        },
    )
}

pub(super) async fn watch(client: &Client, out: &Printer, args: WatchArgs) -> anyhow::Result<()> {
    // The step column as wide as the workflow's longest step name, from its spec when a read
    // finds it (a workflow that cannot be read yet starts narrower and widens as names come).
    let mut columns = EventColumns::default();
    if !out.json()
        && let Ok(workflow) = client.get(args.id, ReadConsistency::Stale).await
    {
        let steps = workflow.spec.iter().flat_map(|spec| &spec.steps);
        columns.fit_steps(steps.map(|step| step.name.as_str()));
    }
    let mut watch = WorkflowWatch::new(client.clone(), args.id, args.from_index);
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => out.print_line(&event, &mut columns)?,
            Ok(Some(WatchUpdate::Resumed { from_index, reason })) => {
                eprintln!("watch resumed from log index {from_index} after: {reason}");
            }
            Ok(None) => return Ok(()),
            Err(error) if error.code() == Some(tonic::Code::NotFound) => {
                return Err(read_failure(args.id)(error));
            }
            Err(error) => {
                return Err(client_failure(
                    error,
                    CallKind::Read,
                    Some(&format!("watching workflow {}", args.id)),
                    None,
                ));
            }
        }
    }
}
