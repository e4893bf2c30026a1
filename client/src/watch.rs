//! Following a workflow's events across disconnects and failovers.
//!
//! `Client::watch` opens one stream (with failover for the opening only). [`WorkflowWatch`]
//! keeps a workflow's events coming: when the stream breaks, or ends before the workflow has
//! finished, it reopens it, on whichever node answers, so that no event is missed or repeated.
//! One log index can carry many events (an entry holds a batch of commands, or assignments), in
//! the same order on every node, so a stream lost partway through an index is reopened at that
//! index and skips the events of it already seen (`ResumePoint`). Reopening tells the caller
//! ([`WatchUpdate::Resumed`]), because a caller waiting for the end may want to check the
//! workflow's state itself then.

use std::time::Duration;

use baton_proto::v1::{EventKind, WorkflowEvent};
use futures::StreamExt;

use crate::agent::backoff::Backoff;
use crate::client::Client;
use crate::error::ClientError;

/// What [`WorkflowWatch::next`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchUpdate {
    Event(WorkflowEvent),
    /// The stream was reopened from `from_index` after `reason`.
    Resumed {
        from_index: u64,
        reason: String,
    },
}

/// Where a watch stands: the last event's index and how many events of that index were seen.
/// Every node holds an index's events in the same order (apply order), so skipping `seen` of them
/// on another node drops exactly those. (A node whose event ring has just dropped the start of
/// that index would make the skip drop others: the ring holds the latest 100,000 events, so that
/// takes a watcher more than 100,000 events behind.)
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ResumePoint {
    index: u64,
    seen: usize,
}

impl ResumePoint {
    fn record(&mut self, index: u64) {
        if index == self.index {
            self.seen += 1;
        } else {
            *self = Self { index, seen: 1 };
        }
    }
}

/// Follows one workflow (or, with id 0, all of them) from a log index on.
pub struct WorkflowWatch {
    client: Client,
    workflow_id: u64,
    /// Where the watch started.
    from_index: u64,
    /// The last event received, if any: a reopened stream starts at its index.
    last: Option<ResumePoint>,
    /// Events of a reopened stream still to drop: the ones of `last.index` seen before.
    skip: Option<ResumePoint>,
    stream: Option<tonic::Streaming<WorkflowEvent>>,
    finished: bool,
    backoff: Backoff,
    /// Why the stream was last lost, reported with the next `Resumed`.
    lost: Option<String>,
    /// Nodes that refused to replay from the resume index in a row (OUT_OF_RANGE): each is
    /// passed over for the next, until every one has refused.
    refusals: usize,
}

impl WorkflowWatch {
    pub fn new(client: Client, workflow_id: u64, from_index: u64) -> WorkflowWatch {
        WorkflowWatch {
            client,
            workflow_id,
            from_index,
            last: None,
            skip: None,
            stream: None,
            finished: false,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            lost: None,
            refusals: 0,
        }
    }

    /// The index the stream resumes from if it is reopened: the last event's (the events of it
    /// already received are skipped), or where the watch started.
    pub fn next_index(&self) -> u64 {
        self.last.map_or(self.from_index, |last| last.index)
    }

    /// The next event or resumption; `Ok(None)` after the workflow's WORKFLOW_FINISHED event.
    /// An error when the stream cannot be (re)opened, after the client's own retries, or the
    /// node refuses the watch (NOT_FOUND, INVALID_ARGUMENT, ...). A watch of every workflow
    /// resumed from an index no node holds every event from any more (each restarted from a
    /// snapshot since, say) ends with OUT_OF_RANGE, whose `baton-events-from` metadata names
    /// where the node can start: the events in between are in the workflows' histories.
    pub async fn next(&mut self) -> Result<Option<WatchUpdate>, ClientError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let Some(stream) = self.stream.as_mut() else {
                let from_index = self.next_index();
                let stream = match self.client.watch(self.workflow_id, from_index).await {
                    Ok(stream) => stream,
                    // A node that no longer holds every event from there (it restarted from a
                    // snapshot, say): another node may. When none does, the caller hears it.
                    Err(error)
                        if error.code() == Some(tonic::Code::OutOfRange)
                            && self.refusals + 1 < self.client.endpoints().len() =>
                    {
                        self.refusals += 1;
                        self.client.prefer_next_endpoint();
                        continue;
                    }
                    Err(error) => {
                        self.refusals = 0;
                        return Err(error);
                    }
                };
                self.refusals = 0;
                self.stream = Some(stream);
                self.skip = self.last;
                if let Some(reason) = self.lost.take() {
                    return Ok(Some(WatchUpdate::Resumed { from_index, reason }));
                }
                continue;
            };
            let lost = match stream.next().await {
                Some(Ok(event)) => {
                    self.backoff.reset();
                    // The watched workflow's end is never a repeat (seen, it ends the watch); a
                    // node that no longer holds it sends it again at the resume index.
                    let end = self.workflow_id != 0
                        && event.workflow_id == self.workflow_id
                        && event.kind == EventKind::WorkflowFinished as i32;
                    if let Some(skip) = self.skip.as_mut() {
                        if event.index == skip.index && skip.seen > 0 && !end {
                            skip.seen -= 1;
                            continue;
                        }
                        self.skip = None;
                    }
                    self.last.get_or_insert_default().record(event.index);
                    if end {
                        self.finished = true;
                        self.stream = None;
                    }
                    return Ok(Some(WatchUpdate::Event(event)));
                }
                Some(Err(status)) => {
                    let endpoint = self.client.preferred_endpoint().to_string();
                    let error = ClientError::from_status(&endpoint, status, Duration::ZERO);
                    if is_final(&error) {
                        self.stream = None;
                        return Err(error);
                    }
                    error.to_string()
                }
                None => "the stream ended before the workflow finished".to_string(),
            };
            tracing::debug!(workflow = self.workflow_id, from_index = self.next_index(), reason = %lost, "watch lost; resuming");
            self.stream = None;
            self.lost = Some(lost);
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }
}

/// A refusal the node considered (NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED, ...) ends the
/// watch; a broken connection, a node going away or a reset stream (which surfaces as
/// UNKNOWN, INTERNAL or CANCELLED) is resumed elsewhere.
fn is_final(error: &ClientError) -> bool {
    use tonic::Code;
    matches!(error, ClientError::Status { status, .. } if !matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            | Code::Internal | Code::Aborted
    ))
}
