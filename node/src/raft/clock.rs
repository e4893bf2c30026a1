//! Replicated time: the time the leader stamps into every entry, the only time `apply` knows.
//!
//! A wall clock can step (an NTP correction, a VM resumed after hours, an operator's `date -s`).
//! Stamping entries with the leader's wall clock as read would pass each step to the state: a step
//! forward of an hour fires every schedule-to-start deadline and backoff at once, and a step back
//! stalls them for an hour (state time is the max of what it has seen). So:
//!
//! - When a node starts leading a term it takes an **anchor**: the lower median of the voters'
//!   wall clocks (its own and those of the voters that answer `Hello` first, a majority in all,
//!   each read as sent time + half the round trip), and never less than the state's time. One
//!   node whose clock is wrong, this one included, cannot move it.
//! - Within the term it stamps `anchor + monotonic time since`: the monotonic clock does not step
//!   (NTP slews it, so it keeps pace with a disciplined wall clock), so a step of the leader's own
//!   wall clock does nothing.
//! - Every [`RESYNC_INTERVAL`] it samples the voters again and moves forward (never back) when
//!   their lower median is ahead by more than [`RESYNC_STEP_MIN_MS`]: a correction most clocks
//!   agree on (NTP fixing a clock that was wrong when the cluster started) reaches state time
//!   without a leader change.
//!
//! State time therefore advances at the rate of real time whatever one wall clock does; it
//! follows the majority of wall clocks across leader changes and resyncs, and never goes back.
//! `baton_clock_offset_seconds` shows the leader's own wall clock against it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::Mutex;

use super::network::Peers;
use super::types::{Raft, RaftNodeId};
use crate::metrics;
use crate::storage::Replica;

/// How often a leader compares its stamps with the voters' wall clocks.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// A resync moves state time forward only past this much: smaller differences are clock noise.
pub const RESYNC_STEP_MIN_MS: u64 = 1_000;
/// How long a sample waits for voters' answers before it makes do with those it has.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(300);

/// The time this leader stamps: `at_ms` at `instant`, advancing with the monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    term: u64,
    at_ms: u64,
    instant: Instant,
    synced: Instant,
}

impl Anchor {
    fn read(&self, now: Instant) -> u64 {
        self.at_ms + now.duration_since(self.instant).as_millis() as u64
    }
}

/// The leader's clock (see the module docs). Cheap to share.
pub struct LeaderClock {
    id: RaftNodeId,
    raft: Raft,
    peers: Peers,
    replica: Arc<Replica>,
    anchor: Mutex<Option<Anchor>>,
}

impl LeaderClock {
    pub fn new(id: RaftNodeId, raft: Raft, peers: Peers, replica: Arc<Replica>) -> Arc<Self> {
        Arc::new(Self {
            id,
            raft,
            peers,
            replica,
            anchor: Mutex::new(None),
        })
    }

    /// The time to stamp into an entry now, in ms since the Unix epoch. The first call of a
    /// term samples the voters' clocks (one round trip); later calls read the monotonic clock.
    pub async fn now_ms(&self) -> u64 {
        let term = self.raft.metrics().borrow_watched().current_term;
        let mut anchor = self.anchor.lock().await;
        let current = anchor.filter(|a| a.term == term);
        let now_ms = match current {
            Some(a) => a.read(Instant::now()),
            None => {
                let sample = self.sample().await;
                let now = Instant::now();
                let at_ms = sample.max(self.replica.read(|a| a.state.now_ms()));
                if at_ms > sample + RESYNC_STEP_MIN_MS {
                    tracing::warn!(
                        term,
                        behind_ms = at_ms - sample,
                        "the voters' clocks are behind the replicated time; it goes on from \
                         where it was"
                    );
                }
                tracing::info!(term, at_ms, "leader clock anchored");
                *anchor = Some(Anchor {
                    term,
                    at_ms,
                    instant: now,
                    synced: now,
                });
                at_ms
            }
        };
        metrics::clock_offset(wall_clock_ms() as f64 - now_ms as f64);
        now_ms
    }

    /// On the leader, every [`RESYNC_INTERVAL`]: moves the anchor forward when the voters'
    /// clocks agree that state time is behind (see the module docs). Runs for the node's life.
    pub async fn resync_while_leading(self: Arc<Self>) {
        let mut every = tokio::time::interval(RESYNC_INTERVAL / 4);
        loop {
            every.tick().await;
            let leading = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow_watched();
                (m.state == ServerState::Leader).then_some(m.current_term)
            };
            let Some(term) = leading else {
                metrics::clock_offset(0.0);
                continue;
            };
            let due = self
                .anchor
                .lock()
                .await
                .is_some_and(|a| a.term == term && a.synced.elapsed() >= RESYNC_INTERVAL);
            if !due {
                continue;
            }
            let sample = self.sample().await;
            let mut anchor = self.anchor.lock().await;
            if let Some(a) = anchor.as_mut().filter(|a| a.term == term) {
                let now = Instant::now();
                if let Some(stepped) = resynced(a.read(now), sample) {
                    tracing::warn!(
                        term,
                        forward_ms = stepped - a.read(now),
                        "the voters' clocks are ahead of the replicated time: moving it forward"
                    );
                    a.at_ms = stepped;
                    a.instant = now;
                }
                a.synced = now;
            }
        }
    }

    /// The lower median of this node's wall clock and the voters' that answer within
    /// [`SAMPLE_TIMEOUT`], taken as soon as a majority of the voters has answered.
    async fn sample(&self) -> u64 {
        let voters: Vec<String> = self.replica.read(|applied| {
            let membership = applied.membership.membership();
            membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
                .collect()
        });
        let members = voters.len() + 1;
        let majority = members / 2 + 1;
        let mut samples = vec![wall_clock_ms()];
        let mut asks: FuturesUnordered<_> = voters
            .iter()
            .map(|addr| async move {
                let sent = Instant::now();
                let answer = self.peers.hello(addr, SAMPLE_TIMEOUT).await?;
                let half_trip = sent.elapsed().as_millis() as u64 / 2;
                Some(answer.wall_time_ms + half_trip)
            })
            .collect();
        let deadline = tokio::time::sleep(SAMPLE_TIMEOUT);
        tokio::pin!(deadline);
        while samples.len() < majority {
            tokio::select! {
                next = asks.next() => match next {
                    Some(Some(sample)) => samples.push(sample),
                    Some(None) => {}
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        quorum_time(&mut samples)
    }
}

/// The lower median of the samples: with a majority of correct clocks among them, neither a fast
/// nor a slow clock decides it; with two, the slower (a clock that jumped ahead cannot fire
/// deadlines early). `samples` is never empty (it holds this node's own clock).
pub fn quorum_time(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[(samples.len() - 1) / 2]
}

/// Where a resync moves the leader's time: forward to `sample` when it is ahead by more than
/// [`RESYNC_STEP_MIN_MS`], otherwise nowhere (`None`). Never back.
fn resynced(current_ms: u64, sample: u64) -> Option<u64> {
    (sample > current_ms + RESYNC_STEP_MIN_MS).then_some(sample)
}

/// This machine's wall clock, in ms since the Unix epoch.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wrong_clock_does_not_decide_the_quorum_time() {
        let hour = 3_600_000;
        let t = 1_700_000_000_000;
        // Three voters, one an hour ahead or behind: the median is a correct clock.
        assert_eq!(quorum_time(&mut [t + hour, t, t + 5]), t + 5);
        assert_eq!(quorum_time(&mut [t - hour, t, t + 5]), t);
        // Two samples (a majority of three): the slower one, so a jump ahead never counts.
        assert_eq!(quorum_time(&mut [t + hour, t]), t);
        // Five voters, two wrong the same way.
        assert_eq!(
            quorum_time(&mut [t + hour, t + hour, t, t + 1, t + 2]),
            t + 2
        );
        assert_eq!(quorum_time(&mut [t]), t);
    }

    #[test]
    fn a_resync_moves_forward_past_noise_and_never_back() {
        assert_eq!(resynced(10_000, 10_500), None, "noise");
        assert_eq!(resynced(10_000, 5_000), None, "never back");
        assert_eq!(resynced(10_000, 20_000), Some(20_000));
    }

    #[test]
    fn an_anchor_advances_with_the_monotonic_clock() {
        let start = Instant::now();
        let anchor = Anchor {
            term: 3,
            at_ms: 1_000,
            instant: start,
            synced: start,
        };
        assert_eq!(anchor.read(start), 1_000);
        assert_eq!(anchor.read(start + Duration::from_millis(250)), 1_250);
    }
}
