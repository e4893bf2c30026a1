//! Group commit of commands into log entries, on the leader.
//!
//! Every command proposed on the leader (its own, and those followers forward) goes through one
//! queue. Up to [`ENTRIES_IN_FLIGHT`] entries are being written at a time; while they are, new
//! commands wait in the queue, and the next free slot takes all of them (up to
//! `--max-commands-per-entry` and [`ENTRY_BATCH_BYTES_MAX`]; a single larger command gets an
//! entry of its own) as one [`Command::Batch`] entry. So a quiet cluster writes each command at
//! once in an entry of its own, and a loaded one pays the per-entry costs (log id, WAL record,
//! replication framing, apply bookkeeping, the responder) once per batch instead of once per
//! submit or report. The batch's commands apply in order, at the entry's index and time; each
//! caller gets its own command's response. A batch commits or fails whole, so an error (not the
//! leader, outcome unknown) means the same for every command in it.
//!
//! Callers that gave up while queued (their request was cancelled or timed out) are dropped
//! before the batch is made: nothing is written for a caller that is no longer waiting, so a
//! timed-out client's retry does not pile up behind its own first attempt.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::clock::LeaderClock;
use super::error::NodeError;
use super::node::Proposed;
use super::types::Raft;
use crate::limits::ENTRY_BATCH_BYTES_MAX;
use crate::metrics;
use crate::state::{Command, Response};

/// Entries written at once. A new one starts as soon as one is committed and applied; the queue
/// builds up only while all are in flight, which is what makes batches under load and none when
/// idle. Enough to keep replication and the WAL busy while an entry is being applied; measured
/// against 2, 8 and 16 in docs/PERFORMANCE.md.
pub const ENTRIES_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Proposed, NodeError>>;

struct Queued {
    command: Command,
    reply: Reply,
}

/// The queue's sending end; the writer task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    /// Starts the writer task over `raft`, stamping entries with `clock`.
    pub fn start(
        raft: Raft,
        clock: Arc<LeaderClock>,
        commands_max: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_batches(raft, clock, rx, commands_max));
        (Self { queue }, task)
    }

    /// Proposes `command` in the next entry and waits until that entry is applied. Must be
    /// called on the leader; a batch written on a node that is not gets `NotLeader` for each.
    pub async fn propose(&self, command: Command) -> Result<Proposed, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { command, reply })
            .map_err(|_| NodeError::Unknown("the node is shutting down".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(NodeError::Unknown("the node is shutting down".into())))
    }
}

/// The writer: takes what is queued whenever an in-flight slot frees, and writes it as one entry.
/// The queue is unbounded, but what feeds it is not: client proposals are capped by
/// `limits::PROPOSALS_IN_FLIGHT_MAX`, reports by sessions times slots, and the scheduler waits for
/// its own proposals.
async fn write_batches(
    raft: Raft,
    clock: Arc<LeaderClock>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    commands_max: usize,
) {
    // Without grouping, a bound on entries in flight would only hold commands back.
    let in_flight = if commands_max == 1 {
        Semaphore::MAX_PERMITS
    } else {
        ENTRIES_IN_FLIGHT
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    // A command that did not fit the previous batch opens the next one.
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => match queue.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever arrived while waiting for the slot joins this entry.
        let (mut bytes, mut commands) = (0, 0);
        let mut batch = Vec::new();
        if !first.reply.is_closed() {
            bytes = encoded_len(&first.command);
            commands = first.command.count();
            batch.push(first);
        }
        while commands < commands_max {
            let Ok(next) = queue.try_recv() else { break };
            if next.reply.is_closed() {
                continue;
            }
            let (len, count) = (encoded_len(&next.command), next.command.count());
            if bytes + len > ENTRY_BATCH_BYTES_MAX || commands + count > commands_max {
                carried = Some(next);
                break;
            }
            bytes += len;
            commands += count;
            batch.push(next);
        }
        if batch.is_empty() {
            continue;
        }
        let (raft, clock) = (raft.clone(), clock.clone());
        tokio::spawn(async move {
            write(&raft, &clock, batch).await;
            drop(slot);
        });
    }
}

/// Writes one entry: the command itself when alone, else a [`Command::Batch`] of them all, a
/// proposed batch's commands spliced in (a batch never nests); answers each caller with its own
/// command's response, or its batch's responses as one [`Response::Batch`].
async fn write(raft: &Raft, clock: &LeaderClock, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let Queued { command, reply } = batch.pop().expect("one command");
        metrics::commands_per_entry(command.count());
        let _ = reply.send(super::node::write_entry(raft, clock, command).await);
        return;
    }
    // Each caller's share of the entry: how many commands, and whether they were a batch.
    let mut shares = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(batch.len());
    for Queued { command, reply } in batch {
        match command {
            Command::Batch(group) => {
                shares.push((reply, group.len(), true));
                commands.extend(group);
            }
            command => {
                shares.push((reply, 1, false));
                commands.push(command);
            }
        }
    }
    metrics::commands_per_entry(commands.len());
    let count = commands.len();
    match super::node::write_entry(raft, clock, Command::Batch(commands)).await {
        Ok(Proposed {
            index,
            response: Response::Batch(responses),
        }) if responses.len() == count => {
            let mut responses = responses.into_iter();
            for (reply, n, grouped) in shares {
                let response = if grouped {
                    Response::Batch(responses.by_ref().take(n).collect())
                } else {
                    responses.next().expect("one response per command")
                };
                let _ = reply.send(Ok(Proposed { index, response }));
            }
        }
        Ok(other) => {
            // Cannot happen with a state machine of this version; say so to every caller
            // rather than guess which response is whose.
            let error = format!("a batch of {count} applied as {other:?}");
            tracing::error!(%error, "batched entry answered out of shape");
            for (reply, ..) in shares {
                let _ = reply.send(Err(NodeError::Fatal(error.clone())));
            }
        }
        Err(err) => {
            for (reply, ..) in shares {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// A command's size in the entry, near enough to bound a batch: the spec or output bytes
/// dominate; field names and values are under 128 bytes for every command.
fn encoded_len(command: &Command) -> usize {
    const FRAME: usize = 128;
    FRAME
        + match command {
            Command::Submit(submit) => {
                submit.spec.len()
                    + submit.idempotency_key.len()
                    + submit.template.as_ref().map_or(0, |t| t.name.len())
            }
            Command::Complete(complete) => complete.output.len() + complete.error.len(),
            Command::Cancel(cancel) => cancel.reason.len() + cancel.actor.len(),
            Command::Pause(pause) => pause.actor.len(),
            Command::Retry(retry) => retry.from_step.len() + retry.actor.len(),
            Command::Signal(signal) => signal.step.len() + signal.data.len() + signal.actor.len(),
            Command::Purge(purge) => purge.workflows.len() * 16,
            Command::CreateSchedule(create) => {
                create.spec.len()
                    + create.workflow.len()
                    + create
                        .params
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            Command::PauseSchedule(pause) => pause.name.len(),
            Command::ApplyTemplate(apply) => apply.spec.len(),
            Command::DeleteTemplate { name }
            | Command::DeleteTrigger { name }
            | Command::DeleteNamespace { name } => name.len(),
            Command::CreateNamespace(create) => create.name.len() + create.description.len(),
            Command::UpdateNamespace(update) => {
                update.name.len() + update.description.as_ref().map_or(0, String::len)
            }
            Command::CreateTrigger(create) => create.spec.len() + create.secret.len(),
            Command::DeleteSchedule { name } | Command::TriggerSchedule { name } => name.len(),
            Command::BackfillSchedule(backfill) => backfill.name.len(),
            Command::Assign { assignments } => assignments.len() * 32,
            Command::ExpireLeases { attempts } => attempts.len() * 16,
            Command::Membership { previous, members } => (previous.len() + members.len()) * 16,
            Command::CreateToken(create) => {
                create.name.len()
                    + create.digest.len()
                    + create
                        .namespaces
                        .keys()
                        .map(|ns| ns.len() + 16)
                        .sum::<usize>()
            }
            Command::BindIncarnation { incarnation, .. } => incarnation.len(),
            Command::RegisterAgent(register) => {
                register.name.len()
                    + register
                        .labels
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            Command::Batch(commands) => commands.iter().map(encoded_len).sum(),
            Command::Audited { actor, command } => actor.len() + encoded_len(command),
            Command::Note(note) => note.actor.len() + note.target.len() + note.detail.len(),
            Command::InitCluster { .. }
            | Command::ReserveNodeId { .. }
            | Command::Tick
            | Command::RevokeToken { .. } => 0,
        }
}
