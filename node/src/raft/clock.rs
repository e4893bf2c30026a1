//! Replicated time: the time the leader stamps into every entry, the only time `apply` knows.
//!
//! A wall clock can step (an NTP correction, a VM resumed after hours, an operator's `date -s`).
//! Stamping entries with the leader's wall clock as read would pass each step to the state: a step
//! forward of an hour fires every schedule-to-start deadline and backoff at once, and a step back
//! stalls them for an hour (state time is the max of what it has seen). So:
//!
//! - When a node starts leading a term it takes an **anchor**: the lower median of the voters'
//!   wall clocks (its own and those of every voter that answers `Hello` within
//!   [`SAMPLE_TIMEOUT`], each taken back to the instant the sample began, a voter having read its
//!   clock half a round trip after it was asked), pinned to that instant, and never less than
//!   the state's time. With every voter answering, one node whose clock is wrong, this one
//!   included, cannot move it. With fewer answering (the others down) it is right while most of
//!   those that answered are; with two clocks it takes the slower, so a clock ahead never counts
//!   (deadlines may fire late, not early).
//!
//!   It waits for every voter, not the first majority to answer: in a three-voter cluster the
//!   first majority is this node and one other, whose lower median is the slower of the two, so a
//!   leader an hour behind (or a voter an hour behind that answered first) anchored at the
//!   state's time, which stands still while no entry is written: every idle second before the
//!   election was lost from state time, and a resync sampling the same way never won it back.
//! - Within the term it stamps `anchor + monotonic time since`: the monotonic clock does not step
//!   (NTP slews it, so it keeps pace with a disciplined wall clock), so a step of the leader's own
//!   wall clock does nothing.
//! - Every [`RESYNC_INTERVAL`] it samples the voters again and moves forward (never back) when
//!   their lower median, from a majority of them at least, is ahead by more than
//!   [`RESYNC_STEP_MIN_MS`]: a correction most clocks agree on (NTP fixing a clock that was wrong
//!   when the cluster started) reaches state time without a leader change.
//! - A voter whose answer carries no clock (`wall_time_ms` 0: a release before this one) counts
//!   as not answering. A leader that hears from fewer than a majority still anchors (it must
//!   stamp something) on the clocks it has, its own included, and says so in a warning.
//!
//! State time therefore advances at the rate of real time whatever one wall clock does; it
//! follows the majority of wall clocks across leader changes and resyncs, and never goes back.
//! `baton_clock_offset_seconds` shows the leader's own wall clock against it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
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
/// How long a sample waits for voters' answers before it makes do with those it has. A stopped
/// process refuses at once; only a paused or cut-off voter makes a new term's first entry wait
/// this long.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_millis(300);

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
                let (
                    start,
                    Sample {
                        time_ms: sample,
                        clocks,
                        majority,
                    },
                ) = self.sample().await;
                if !majority {
                    tracing::warn!(
                        term,
                        clocks,
                        "fewer than a majority of the voters told their clocks: anchoring on \
                         those that did"
                    );
                }
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
                    instant: start,
                    synced: start,
                });
                // Read like any later stamp: the sample took a round trip (a timeout at most).
                anchor.expect("just anchored").read(Instant::now())
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
            let (
                start,
                Sample {
                    time_ms: sample,
                    majority,
                    ..
                },
            ) = self.sample().await;
            if !majority {
                // A minority (this node's clock alone, perhaps) must not move state time: the
                // next round asks again.
                continue;
            }
            let mut anchor = self.anchor.lock().await;
            if let Some(a) = anchor.as_mut().filter(|a| a.term == term) {
                if let Some(stepped) = resynced(a.read(start), sample) {
                    tracing::warn!(
                        term,
                        forward_ms = stepped - a.read(start),
                        "the voters' clocks are ahead of the replicated time: moving it forward"
                    );
                    a.at_ms = stepped;
                    a.instant = start;
                }
                a.synced = start;
            }
        }
    }

    /// The voters' wall clocks as they read at the returned instant (when the sample began):
    /// this node's own and those of every other voter that answers within [`SAMPLE_TIMEOUT`].
    async fn sample(&self) -> (Instant, Sample) {
        let voters: Vec<String> = self.replica.read(|applied| {
            let membership = applied.membership.membership();
            membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
                .collect()
        });
        let (start, own_ms) = (Instant::now(), wall_clock_ms());
        let answers: FuturesUnordered<_> = voters
            .iter()
            .map(|addr| async move {
                let sent = Instant::now();
                let answer = self.peers.hello(addr, SAMPLE_TIMEOUT).await?;
                // It read its clock about half a round trip after `sent`.
                let read_after = sent.duration_since(start) + sent.elapsed() / 2;
                clock_reading(answer.wall_time_ms, read_after)
            })
            .collect();
        let sample = gather(own_ms, voters.len() + 1, answers, SAMPLE_TIMEOUT).await;
        (start, sample)
    }
}

/// Voters' wall clocks read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    /// Their lower median ([`quorum_time`]), in ms since the Unix epoch.
    time_ms: u64,
    /// How many clocks it was taken from, this node's own included.
    clocks: usize,
    /// Whether those were a majority of the voters.
    majority: bool,
}

/// This node's clock `own_ms` and every clock in `answers` (one item per other voter; `None`
/// for a voter that could not tell) that arrives within `timeout`, out of `voters` voters in
/// all. It waits for every answer, not for the first majority (see the module docs).
async fn gather(
    own_ms: u64,
    voters: usize,
    mut answers: impl Stream<Item = Option<u64>> + Unpin,
    timeout: Duration,
) -> Sample {
    let mut clocks = vec![own_ms];
    let every_answer = async {
        while let Some(answer) = answers.next().await {
            clocks.extend(answer);
        }
    };
    // Past the timeout it makes do with the clocks it has.
    let _ = tokio::time::timeout(timeout, every_answer).await;
    Sample {
        clocks: clocks.len(),
        majority: clocks.len() > voters / 2,
        time_ms: quorum_time(&mut clocks),
    }
}

/// What a voter's clock read when the sample began, from the `wall_time_ms` of its `Hello`
/// answer, read `read_after` the sample began: so every clock in a sample, however late its
/// answer came, speaks of one instant, which the anchor is pinned to. `None` when the answer
/// has no clock (0: a release before this one).
fn clock_reading(wall_time_ms: u64, read_after: Duration) -> Option<u64> {
    (wall_time_ms != 0).then(|| wall_time_ms.saturating_sub(read_after.as_millis() as u64))
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

    const HOUR: u64 = 3_600_000;
    const T: u64 = 1_700_000_000_000;

    /// An answer of `clock` after `after_ms`.
    async fn answer(clock: Option<u64>, after_ms: u64) -> Option<u64> {
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        clock
    }

    #[tokio::test]
    async fn a_sample_waits_for_every_voter_not_the_first_majority() {
        // This node is an hour behind, the voter that answers first an hour ahead, the last one
        // right. The first majority (this node and the fast one) would take the slow clock, and
        // the anchor would fall back to the state's time, losing the idle time before the
        // election (t59 saw 5 s of it lost).
        let answers: FuturesUnordered<_> = [answer(Some(T + HOUR), 0), answer(Some(T + 3), 30)]
            .into_iter()
            .collect();
        let sample = gather(T - HOUR, 3, answers, Duration::from_secs(60)).await;
        assert_eq!(
            sample,
            Sample {
                time_ms: T + 3,
                clocks: 3,
                majority: true
            }
        );
        // Five voters, two of them an hour ahead and answering first.
        let answers: FuturesUnordered<_> = [
            answer(Some(T + HOUR), 0),
            answer(Some(T + HOUR), 0),
            answer(Some(T + 1), 20),
            answer(Some(T + 2), 30),
        ]
        .into_iter()
        .collect();
        let sample = gather(T, 5, answers, Duration::from_secs(60)).await;
        assert_eq!((sample.time_ms, sample.clocks), (T + 2, 5));
    }

    #[tokio::test]
    async fn a_sample_makes_do_with_the_clocks_it_has_and_says_whether_they_are_a_majority() {
        // One voter silent past the timeout, one refusing: this node (an hour ahead) and the one
        // that answered are a majority of three, and the slower of the two decides.
        let answers: FuturesUnordered<_> = [answer(Some(T), 0), answer(None, 0)]
            .into_iter()
            .chain([answer(Some(T + 5), 3_600_000)])
            .collect();
        let sample = gather(T + HOUR, 4, answers, Duration::from_millis(50)).await;
        assert_eq!(
            sample,
            Sample {
                time_ms: T,
                clocks: 2,
                majority: false
            },
            "2 clocks of 4 voters are not a majority"
        );
        let answers: FuturesUnordered<_> =
            [answer(Some(T), 0), answer(None, 0)].into_iter().collect();
        let sample = gather(T + HOUR, 3, answers, Duration::from_secs(60)).await;
        assert_eq!(
            sample,
            Sample {
                time_ms: T,
                clocks: 2,
                majority: true
            }
        );
        // Alone: its own clock, flagged.
        let answers: FuturesUnordered<_> = [answer(None, 0), answer(None, 0)].into_iter().collect();
        let sample = gather(T + HOUR, 3, answers, Duration::from_secs(60)).await;
        assert_eq!(
            sample,
            Sample {
                time_ms: T + HOUR,
                clocks: 1,
                majority: false
            }
        );
    }

    #[test]
    fn an_answer_without_a_clock_is_no_clock() {
        assert_eq!(clock_reading(0, Duration::from_millis(40)), None);
        // Read 40 ms into the sample: 40 ms more than at its start.
        assert_eq!(clock_reading(T + 40, Duration::from_millis(40)), Some(T));
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
