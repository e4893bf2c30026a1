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
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                live: broadcast::channel(EVENTS_WATCHER_BUFFER).0,
            }),
        }
    }
}

impl EventLog {
    pub fn publish(&self, events: Vec<pb::WorkflowEvent>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for event in events {
            if inner.ring.len() == EVENTS_RETAINED_MAX {
                inner.ring.pop_front();
            }
            // No receiver is fine: nobody is watching.
            let _ = inner.live.send(event.clone());
            inner.ring.push_back(event);
        }
    }

    /// The retained events at or after `from_index` and a receiver of every later one, with no
    /// gap and no duplicate between the two.
    pub fn subscribe(
        &self,
        from_index: u64,
    ) -> (
        Vec<pb::WorkflowEvent>,
        broadcast::Receiver<pb::WorkflowEvent>,
    ) {
        let inner = self.inner.lock();
        let start = inner.ring.partition_point(|e| e.index < from_index);
        let past = inner.ring.range(start..).cloned().collect();
        (past, inner.live.subscribe())
    }

    /// The oldest retained index (0 when empty).
    pub fn oldest_index(&self) -> u64 {
        self.inner.lock().ring.front().map_or(0, |e| e.index)
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
        let (past, mut live) = log.subscribe(2);
        assert_eq!(past.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 2, 3]);
        log.publish(vec![event(4)]);
        assert_eq!(live.try_recv().unwrap().index, 4);
        assert!(live.try_recv().is_err());
    }
}
