//! Group commit of commands into log entries, on the leader.
//!
//! Every command proposed on the leader (its own, and those followers forward) goes through one
//! queue, and what waits there is written as one [`Command::Batch`] entry (up to
//! `--max-commands-per-entry` and [`ENTRY_BATCH_BYTES_MAX`]; a single larger command gets an entry
//! of its own). Every entry has fixed costs on every node (a log id, a WAL sync, a replication
//! round, apply bookkeeping, the wake-ups of each), so the fewer the entries the less CPU a
//! workflow costs. Three rules decide when the next entry starts:
//!
//! - **Idle, at once.** A command that finds nothing in flight and little load is written at
//!   once in an entry of its own: a lone client never waits.
//! - **Under load, linger.** Once entries carry several commands ([`LINGER_MIN_COMMANDS`]), a
//!   new entry waits while commands keep arriving: until none came for [`LINGER_GAP`], or the
//!   oldest has waited `--entry-linger-ms`, or [`LINGER_FILL`] wait. At 1,000 workflows a second
//!   this writes ~160 entries a second where there were ~2,100 (docs/PERFORMANCE.md).
//! - **Pipeline only when it pays.** One entry is in flight at a time; a second (up to
//!   [`ENTRIES_IN_FLIGHT`]) starts beside it only once [`PIPELINE_MIN_COMMANDS`] wait, so a
//!   heavily loaded leader keeps its WAL, replication and apply all busy.
//!
//! The batch's commands apply in order, at the entry's index and time; each caller gets its own
//! command's response. A batch commits or fails whole, so an error (not the leader, outcome
//! unknown) means the same for every command in it.
//!
//! Callers that gave up while queued (their request was cancelled or timed out) are dropped
//! before the batch is made: nothing is written for a caller that is no longer waiting, so a
//! timed-out client's retry does not pile up behind its own first attempt.

use std::collections::VecDeque;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::clock::LeaderClock;
use super::error::NodeError;
use super::node::Proposed;
use super::node::RaftTiming;
use super::types::Raft;
use crate::limits::ENTRY_BATCH_BYTES_MAX;
use crate::metrics;
use crate::state::{Command, Response};

/// Entries written at once, at most. Enough to keep replication and the WAL busy while an entry is
/// being applied; measured against 2, 8 and 16 in docs/PERFORMANCE.md.
pub const ENTRIES_IN_FLIGHT: usize = 4;

/// Commands that must be waiting for a second (third, ...) entry to start beside one in flight:
/// below it they wait for the entry in flight and share the next one.
pub const PIPELINE_MIN_COMMANDS: usize = 16;

/// Lingering (`--entry-linger-ms`) starts only when the last entry carried, or the queue holds,
/// this many commands: a lone client keeps at most three moving at once (its submit, the
/// scheduler's assignment of its previous workflow, the agent's report), and must not wait for
/// company that cannot come.
const LINGER_MIN_COMMANDS: usize = 4;

/// A lingering entry goes once no command arrived for this long: the load has paused, or every
/// client is waiting on the entry itself (a closed loop).
const LINGER_GAP: Duration = Duration::from_millis(2);

/// A lingering entry goes at once when this many commands wait.
const LINGER_FILL: usize = 64;

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
        timing: &RaftTiming,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let pipeline = Pipeline::new(timing.commands_per_entry_max, timing.entry_linger);
        let task = tokio::spawn(write_batches(raft, clock, rx, pipeline));
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

/// The writer: starts an entry of what is queued whenever one may start and has lingered enough
/// (see the module's rules), and writes it. The queue is unbounded, but what feeds it is not:
/// client proposals are capped by `limits::PROPOSALS_IN_FLIGHT_MAX`, reports by sessions times
/// slots, and the scheduler waits for its own proposals.
async fn write_batches(
    raft: Raft,
    clock: Arc<LeaderClock>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    pipeline: Pipeline,
) {
    let (done, mut finished) = mpsc::unbounded_channel::<()>();
    let mut waiting = Waiting::default();
    let mut in_flight = 0;
    let mut last_commands = 0;
    loop {
        while pipeline.may_start(in_flight, waiting.commands)
            && pipeline.lingered(&waiting, last_commands, Instant::now())
        {
            let Some(batch) = waiting.take(pipeline.commands_max) else {
                break;
            };
            in_flight += 1;
            last_commands = batch.iter().map(|q| q.command.count()).sum();
            let (raft, clock, done) = (raft.clone(), clock.clone(), done.clone());
            tokio::spawn(async move {
                write(&raft, &clock, batch).await;
                let _ = done.send(());
            });
        }
        // Wake when a wait ends, if only the wait holds the next entry back.
        let linger_until = pipeline
            .may_start(in_flight, waiting.commands)
            .then(|| pipeline.linger_until(&waiting))
            .flatten();
        tokio::select! {
            biased;
            Some(()) = finished.recv(), if in_flight > 0 => in_flight -= 1,
            () = sleep_until(linger_until) => {}
            queued = queue.recv() => match queued {
                Some(queued) => waiting.push(queued),
                None => return,
            },
        }
        while let Ok(queued) = queue.try_recv() {
            waiting.push(queued);
        }
    }
}

/// When an entry may start: at once when none is in flight; beside others (up to `max`) only
/// once `min_commands` wait, so a loaded leader keeps its WAL, replication and apply all busy,
/// while a lightly loaded one lets what arrives during one entry's round trip share the next
/// entry instead of paying an entry's fixed costs (a WAL sync and a replication round on every
/// node, an apply, wake-ups) per command.
#[derive(Clone, Copy, Debug)]
struct Pipeline {
    /// `--max-commands-per-entry`.
    commands_max: usize,
    /// Entries in flight at most.
    max: usize,
    /// Commands waiting before a second entry starts beside one in flight.
    min_commands: usize,
    /// `--entry-linger-ms`.
    linger: Duration,
}

impl Pipeline {
    fn new(commands_max: usize, linger: Duration) -> Self {
        if commands_max == 1 {
            // Without grouping, neither a bound on entries in flight nor a wait would do
            // anything but hold commands back.
            return Self {
                commands_max,
                max: usize::MAX,
                min_commands: 1,
                linger: Duration::ZERO,
            };
        }
        Self {
            commands_max,
            max: ENTRIES_IN_FLIGHT,
            min_commands: PIPELINE_MIN_COMMANDS,
            linger,
        }
    }

    /// Whether what waits has waited enough to be written: at once when lingering is off, a
    /// full entry's worth waits, or the load is not enough for company to come (neither the last
    /// entry nor the queue has [`LINGER_MIN_COMMANDS`]); else once [`LINGER_GAP`] passed without
    /// a new command or the oldest has waited the whole linger.
    fn lingered(self, waiting: &Waiting, last_commands: usize, now: Instant) -> bool {
        self.linger.is_zero()
            || waiting.commands >= self.commands_max.min(LINGER_FILL)
            || (last_commands < LINGER_MIN_COMMANDS && waiting.commands < LINGER_MIN_COMMANDS)
            || waiting
                .since
                .is_some_and(|since| now >= since + self.linger)
            || waiting.last.is_some_and(|last| now >= last + LINGER_GAP)
    }

    /// When what waits will have lingered enough, if nothing else arrives.
    fn linger_until(self, waiting: &Waiting) -> Option<Instant> {
        let since = waiting.since?;
        let last = waiting.last.unwrap_or(since);
        Some((since + self.linger).min(last + LINGER_GAP))
    }

    fn may_start(self, in_flight: usize, waiting: usize) -> bool {
        waiting > 0 && (in_flight == 0 || (in_flight < self.max && waiting >= self.min_commands))
    }
}

/// Commands waiting for an entry, in arrival order.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<Queued>,
    /// When the oldest waiting command arrived.
    since: Option<Instant>,
    /// When the newest waiting command arrived.
    last: Option<Instant>,
    /// Commands in `queue` (a batch counts its own).
    commands: usize,
}

impl Waiting {
    fn push(&mut self, queued: Queued) {
        let now = Instant::now();
        self.since.get_or_insert(now);
        self.last = Some(now);
        self.commands += queued.command.count();
        self.queue.push_back(queued);
    }

    /// The next entry's commands: from the front, up to `commands_max` and
    /// [`ENTRY_BATCH_BYTES_MAX`] (a single larger command alone), skipping callers that gave up.
    fn take(&mut self, commands_max: usize) -> Option<Vec<Queued>> {
        let (mut bytes, mut commands) = (0, 0);
        let mut batch = Vec::new();
        while let Some(next) = self.queue.front() {
            let (len, count) = (encoded_len(&next.command), next.command.count());
            if next.reply.is_closed() {
                self.commands -= count;
                self.queue.pop_front();
                continue;
            }
            if !batch.is_empty()
                && (bytes + len > ENTRY_BATCH_BYTES_MAX || commands + count > commands_max)
            {
                break;
            }
            bytes += len;
            commands += count;
            self.commands -= count;
            batch.push(self.queue.pop_front().expect("a front"));
        }
        if self.queue.is_empty() {
            self.since = None;
            self.last = None;
        } else if !batch.is_empty() {
            self.since = Some(Instant::now());
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(command: Command) -> (Queued, oneshot::Receiver<Result<Proposed, NodeError>>) {
        let (reply, answer) = oneshot::channel();
        (Queued { command, reply }, answer)
    }

    fn waiting(
        n: usize,
        since: Instant,
        last: Instant,
    ) -> (Waiting, Vec<oneshot::Receiver<Result<Proposed, NodeError>>>) {
        let mut waiting = Waiting::default();
        let mut answers = Vec::new();
        for _ in 0..n {
            let (q, answer) = queued(Command::Tick);
            waiting.push(q);
            answers.push(answer);
        }
        waiting.since = Some(since);
        waiting.last = Some(last);
        (waiting, answers)
    }

    const LINGER: Duration = Duration::from_millis(5);

    #[test]
    fn a_lone_command_is_written_at_once() {
        let pipeline = Pipeline::new(1_024, LINGER);
        let now = Instant::now();
        let (one, _answers) = waiting(1, now, now);
        assert!(pipeline.may_start(0, one.commands));
        assert!(pipeline.lingered(&one, 1, now));
        // A lone client's three commands at once are not load either.
        let (three, _answers) = waiting(3, now, now);
        assert!(pipeline.lingered(&three, 3, now));
    }

    #[test]
    fn under_load_an_entry_waits_while_commands_keep_coming() {
        let pipeline = Pipeline::new(1_024, LINGER);
        let start = Instant::now();
        let (mut w, _answers) = waiting(2, start, start);
        // The last entry carried several commands: wait for company.
        assert!(!pipeline.lingered(&w, LINGER_MIN_COMMANDS, start));
        assert_eq!(pipeline.linger_until(&w), Some(start + LINGER_GAP));
        // Nothing came for the gap: go.
        assert!(pipeline.lingered(&w, LINGER_MIN_COMMANDS, start + LINGER_GAP));
        // Commands keep coming: go once the oldest waited the whole linger, not later.
        w.last = Some(start + LINGER - Duration::from_micros(100));
        assert!(!pipeline.lingered(
            &w,
            LINGER_MIN_COMMANDS,
            start + LINGER - Duration::from_micros(50)
        ));
        assert!(pipeline.lingered(&w, LINGER_MIN_COMMANDS, start + LINGER));
        assert_eq!(pipeline.linger_until(&w), Some(start + LINGER));
        // Enough waiting without a previous batch counts as load too.
        let (four, _answers) = waiting(LINGER_MIN_COMMANDS, start, start);
        assert!(!pipeline.lingered(&four, 1, start));
    }

    #[test]
    fn a_full_entry_goes_without_lingering() {
        let pipeline = Pipeline::new(1_024, LINGER);
        let now = Instant::now();
        let (full, _answers) = waiting(LINGER_FILL, now, now);
        assert!(pipeline.lingered(&full, LINGER_FILL, now));
        let small = Pipeline::new(8, LINGER);
        let (eight, _answers) = waiting(8, now, now);
        assert!(small.lingered(&eight, 8, now));
    }

    #[test]
    fn lingering_off_and_grouping_off_never_wait() {
        let now = Instant::now();
        let (w, _answers) = waiting(10, now, now);
        assert!(Pipeline::new(1_024, Duration::ZERO).lingered(&w, 100, now));
        let ungrouped = Pipeline::new(1, LINGER);
        assert!(ungrouped.lingered(&w, 100, now));
        assert!(ungrouped.may_start(1_000, 1));
    }

    #[test]
    fn a_second_entry_starts_only_when_enough_waits() {
        let pipeline = Pipeline::new(1_024, LINGER);
        assert!(!pipeline.may_start(0, 0));
        assert!(pipeline.may_start(0, 1));
        assert!(!pipeline.may_start(1, PIPELINE_MIN_COMMANDS - 1));
        assert!(pipeline.may_start(1, PIPELINE_MIN_COMMANDS));
        assert!(!pipeline.may_start(ENTRIES_IN_FLIGHT, 10_000));
    }

    #[test]
    fn a_batch_skips_callers_that_left_and_keeps_to_the_bound() {
        let now = Instant::now();
        let (mut w, mut answers) = waiting(5, now, now);
        // The second caller gave up.
        drop(answers.remove(1));
        let batch = w.take(3).expect("a batch");
        assert_eq!(batch.len(), 3);
        assert_eq!(w.commands, 1, "one left for the next entry");
        assert!(w.since.is_some());
        let last = w.take(3).expect("the rest");
        assert_eq!(last.len(), 1);
        assert_eq!((w.commands, w.since, w.last), (0, None, None));
        assert!(w.take(3).is_none());
    }
}
