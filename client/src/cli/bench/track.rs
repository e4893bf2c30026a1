//! Following the run: one Watch of all workflows (`forward_events`), whose events become a
//! `Track` per workflow, until every accepted workflow has finished or the drain timeout.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton_client::proto::{EventKind, WorkflowEvent, WorkflowState};
use baton_client::{WatchUpdate, WorkflowWatch};
use tokio::sync::mpsc;

use super::load::Submitters;

/// Keeps the watch of all workflows going, into a channel (so that the tracker's select never
/// cancels the watch halfway through a reconnect).
pub async fn forward_events(
    mut watch: WorkflowWatch,
    events: mpsc::UnboundedSender<WorkflowEvent>,
) {
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => {
                if events.send(event).is_err() {
                    return;
                }
            }
            Ok(Some(WatchUpdate::Resumed { from_index, reason })) => {
                tracing::info!(from_index, %reason, "bench: watch resumed");
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "bench: the watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What the events said about one workflow (times are the leader's, in ms).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Track {
    pub submitted_ms: Option<u64>,
    pub first_assigned_ms: Option<u64>,
    pub finished: Option<(u64, WorkflowState)>,
    pub steps_finished: u64,
}

impl Track {
    pub fn apply(&mut self, event: &WorkflowEvent) {
        match EventKind::try_from(event.kind) {
            Ok(EventKind::WorkflowSubmitted) => self.submitted_ms = Some(event.time_ms),
            Ok(EventKind::StepAssigned) => {
                self.first_assigned_ms.get_or_insert(event.time_ms);
            }
            Ok(EventKind::StepFinished) => self.steps_finished += 1,
            Ok(EventKind::WorkflowFinished) => {
                let state =
                    WorkflowState::try_from(event.workflow_state).unwrap_or(WorkflowState::Failed);
                self.finished = Some((event.time_ms, state));
            }
            _ => {}
        }
    }
}

/// Follows events until every accepted workflow has finished, or the drain timeout after the
/// last submit; returns the tracks of the accepted workflows only.
pub async fn track(
    mut events: mpsc::UnboundedReceiver<WorkflowEvent>,
    mut ids: mpsc::UnboundedReceiver<u64>,
    shared: Arc<Submitters>,
    drain_timeout: Duration,
) -> (HashMap<u64, Track>, Vec<u64>) {
    let mut tracks: HashMap<u64, Track> = HashMap::new();
    // Every assignment's time, any workflow's: what --kill-leader measures failover against.
    let mut assigned_ms = Vec::new();
    let mut ours: HashSet<u64> = HashSet::new();
    let mut open = 0usize; // ours, not finished
    let mut finished = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            id = ids.recv(), if drain_deadline.is_none() => match id {
                Some(id) => {
                    if ours.insert(id) {
                        if tracks.get(&id).is_some_and(|t| t.finished.is_some()) {
                            finished += 1;
                        } else {
                            open += 1;
                        }
                    }
                }
                None => drain_deadline = Some(Instant::now() + drain_timeout),
            },
            event = events.recv() => {
                let Some(event) = event else { break };
                if event.kind == EventKind::StepAssigned as i32 {
                    assigned_ms.push(event.time_ms);
                }
                let track = tracks.entry(event.workflow_id).or_default();
                let was_finished = track.finished.is_some();
                track.apply(&event);
                if !was_finished && track.finished.is_some() && ours.contains(&event.workflow_id) {
                    open -= 1;
                    finished += 1;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!(
                "\rbench: accepted {}, errors {}, finished {finished}   ",
                shared.accepted.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
            );
        }
        if let Some(deadline) = drain_deadline
            && (open == 0 || Instant::now() >= deadline)
        {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    tracks.retain(|id, _| ours.contains(id));
    for id in ours {
        tracks.entry(id).or_default();
    }
    (tracks, assigned_ms)
}
