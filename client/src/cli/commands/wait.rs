//! `--wait`: follow a submitted workflow to its end; the exit code says how it ended.

use baton_client::output::{self, EventColumns};
use baton_client::proto::{EventKind, ReadConsistency, WorkflowState};
use baton_client::{Client, WatchUpdate, WorkflowWatch};

use crate::cli::failure::{CallKind, Failure, client_failure};

/// Follows a workflow from `from_index` until it ends, printing step events to stderr; Ok only
/// if it succeeded. After a reconnect, or when the watch fails, the workflow's state is read
/// with Get, since the stream may have missed nothing yet the end may be known already.
pub(super) async fn wait_for_end(
    client: &Client,
    workflow_id: u64,
    from_index: u64,
    columns: &mut EventColumns,
) -> anyhow::Result<()> {
    let mut watch = WorkflowWatch::new(client.clone(), workflow_id, from_index);
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => {
                let finished = event.kind == EventKind::WorkflowFinished as i32;
                if !event.step.is_empty() || finished {
                    eprintln!("{}", columns.render(&event));
                }
                if finished {
                    return outcome(workflow_id, event.workflow_state, &event.message);
                }
            }
            Ok(Some(WatchUpdate::Resumed { .. })) => {
                if let Some(done) = finished_state(client, workflow_id).await? {
                    return done;
                }
            }
            Ok(None) => {
                // The watch saw the end; only reachable if that event was not handled above.
                return finished_state(client, workflow_id)
                    .await?
                    .unwrap_or_else(|| {
                        Err(Failure::failed(format!(
                            "workflow {workflow_id}: the watch ended early"
                        )))
                    });
            }
            Err(error) => {
                if let Ok(Some(done)) = finished_state(client, workflow_id).await {
                    return done;
                }
                let hint = format!(
                    "the workflow was submitted; follow it with `baton watch {workflow_id}`"
                );
                let mut failure = client_failure(
                    error,
                    CallKind::Read,
                    Some(&format!("watching workflow {workflow_id}")),
                    None,
                );
                if let Some(failure) = failure.downcast_mut::<Failure>() {
                    failure.hint = Some(hint);
                }
                return Err(failure);
            }
        }
    }
}

/// The wait's result when the workflow has finished, from a Get; `None` while it runs.
async fn finished_state(
    client: &Client,
    workflow_id: u64,
) -> anyhow::Result<Option<anyhow::Result<()>>> {
    let workflow = client
        .get(workflow_id, ReadConsistency::Linearizable)
        .await
        .map_err(|error| {
            client_failure(
                error,
                CallKind::Read,
                Some(&format!("workflow {workflow_id}")),
                None,
            )
        })?;
    if workflow.state == WorkflowState::Running as i32
        || workflow.state == WorkflowState::Unspecified as i32
    {
        return Ok(None);
    }
    Ok(Some(outcome(workflow_id, workflow.state, &workflow.reason)))
}

fn outcome(workflow_id: u64, state: i32, reason: &str) -> anyhow::Result<()> {
    if state == WorkflowState::Succeeded as i32 {
        return Ok(());
    }
    let state = output::workflow_state_name(state);
    let reason = reason.trim();
    Err(Failure::failed(if reason.is_empty() {
        format!("workflow {workflow_id} {state}")
    } else {
        format!("workflow {workflow_id} {state}: {reason}")
    }))
}
