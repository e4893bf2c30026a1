//! The events of applied entries, kept per node for `Watch`: a bounded ring of recent events and
//! a broadcast of new ones. Every replica derives the same events from the same log, so a watcher
//! can resume on any node from the last index it saw.

use std::collections::VecDeque;

use baton_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Events kept for late or resuming watchers.
pub const EVENTS_RETAINED_MAX: usize = 100_000;
/// New events buffered per watcher before it is cut off as too slow (it resumes from its index).
pub const EVENTS_WATCHER_BUFFER: usize = 16_384;

pub struct EventLog {
    inner: Mutex<Inner>,
}

struct Inner {
    ring: VecDeque<pb::WorkflowEvent>,
    live: broadcast::Sender<pb::WorkflowEvent>,
    /// Every event at or after this index is held (or still to come): below it, this node
    /// never published some (it started from a snapshot, or caught up by one) or has dropped
    /// some from the ring.
    whole_from: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

/// A watch asked for events this node no longer holds: the first index from which it holds
/// every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotHeld {
    pub whole_from: u64,
}

impl EventLog {
    /// An event log whose first event will be of index `whole_from` or later: a node that
    /// loaded a snapshot of index `S` never publishes the events up to `S`.
    pub fn starting_at(whole_from: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                live: broadcast::channel(EVENTS_WATCHER_BUFFER).0,
                whole_from,
            }),
        }
    }

    pub fn publish(&self, events: Vec<pb::WorkflowEvent>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for event in events {
            if inner.ring.len() == EVENTS_RETAINED_MAX
                && let Some(dropped) = inner.ring.pop_front()
            {
                inner.whole_from = inner.whole_from.max(dropped.index + 1);
            }
            // No receiver is fine: nobody is watching.
            let _ = inner.live.send(event.clone());
            inner.ring.push_back(event);
        }
    }

    /// The state jumped to a snapshot of index `index` (installed from the leader): the events
    /// up to it are never published here. The ring is emptied, and every live watch ends, so
    /// that its watcher resumes and learns what this node holds, rather than going on past a
    /// gap it cannot see.
    pub fn skipped_to(&self, index: u64) {
        let mut inner = self.inner.lock();
        inner.ring.clear();
        inner.whole_from = inner.whole_from.max(index + 1);
        // Dropping the sender closes every receiver.
        inner.live = broadcast::channel(EVENTS_WATCHER_BUFFER).0;
    }

    /// The retained events at or after `from_index` and a receiver of every later one, with no
    /// gap and no duplicate between the two; [`NotHeld`] when this node does not hold every
    /// event from `from_index` on (`from_index` 0 asks for whatever is held).
    pub fn subscribe(
        &self,
        from_index: u64,
    ) -> Result<
        (
            Vec<pb::WorkflowEvent>,
            broadcast::Receiver<pb::WorkflowEvent>,
        ),
        NotHeld,
    > {
        let inner = self.inner.lock();
        if from_index != 0 && from_index < inner.whole_from {
            return Err(NotHeld {
                whole_from: inner.whole_from,
            });
        }
        let start = inner.ring.partition_point(|e| e.index < from_index);
        let past = inner.ring.range(start..).cloned().collect();
        Ok((past, inner.live.subscribe()))
    }

    /// A receiver of every event published from now on.
    pub fn subscribe_live(&self) -> broadcast::Receiver<pb::WorkflowEvent> {
        self.inner.lock().live.subscribe()
    }

    /// The first index from which this node holds every event.
    pub fn whole_from(&self) -> u64 {
        self.inner.lock().whole_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64) -> pb::WorkflowEvent {
        pb::WorkflowEvent {
            index,
            ..Default::default()
        }
    }

    #[test]
    fn a_subscriber_sees_the_past_then_the_future_without_gap_or_repeat() {
        let log = EventLog::default();
        log.publish(vec![event(1), event(2), event(2), event(3)]);
        let (past, mut live) = log.subscribe(2).unwrap();
        assert_eq!(past.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 2, 3]);
        log.publish(vec![event(4)]);
        assert_eq!(live.try_recv().unwrap().index, 4);
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn a_watch_from_before_what_is_held_is_refused_and_live_watches_end_at_a_snapshot() {
        // A node that started from a snapshot of index 9.
        let log = EventLog::starting_at(10);
        log.publish(vec![event(10), event(11)]);
        assert_eq!(log.subscribe(9).unwrap_err(), NotHeld { whole_from: 10 });
        assert_eq!(log.subscribe(10).unwrap().0.len(), 2);
        assert_eq!(log.subscribe(0).unwrap().0.len(), 2);
        let (_, mut live) = log.subscribe(12).unwrap();
        // Then it catches up by a snapshot of index 20.
        log.skipped_to(20);
        assert!(matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert_eq!(log.subscribe(12).unwrap_err(), NotHeld { whole_from: 21 });
        let (past, mut live) = log.subscribe(21).unwrap();
        assert!(past.is_empty());
        log.publish(vec![event(21)]);
        assert_eq!(live.try_recv().unwrap().index, 21);
    }

    #[test]
    fn dropping_part_of_an_index_from_the_ring_makes_it_not_held() {
        let log = EventLog::default();
        let events: Vec<_> = (0..EVENTS_RETAINED_MAX as u64 + 1)
            .map(|i| event(1 + i / 2))
            .collect();
        log.publish(events);
        // The first event of index 1 was dropped; its second is still held.
        assert_eq!(log.whole_from(), 2);
        assert!(log.subscribe(1).is_err());
        assert_eq!(log.subscribe(2).unwrap().0.first().unwrap().index, 2);
    }
}
