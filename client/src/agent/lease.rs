//! Self-fencing (design rule 3): the agent's own view of each attempt's lease, as pure code.
//!
//! The leader renews a lease when a heartbeat listing the attempt reaches it, and reassigns the
//! step once the lease has not been renewed for its TTL plus a margin. The agent must stop the
//! attempt *before* that can happen, without knowing when the leader received anything. So it
//! counts from what it does know, the moment it *sent* the heartbeat that the leader then
//! acknowledged (the leader received it later, so its own deadline is later still), and takes
//! off a safety margin for clock drift and the time it takes to kill a process group.
//!
//! Everything here takes `now` as an argument, so the deadline rules are tested without a clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Heartbeats remembered while their acknowledgements are outstanding. Acks come back in
/// order on one stream; this only bounds memory when a node stops acknowledging.
pub const HEARTBEATS_IN_FLIGHT_MAX: usize = 64;

/// The part of the TTL the agent does not use: at least
/// `baton_proto::limits::AGENT_LEASE_SAFETY_MARGIN_MS_MIN` (a SIGTERM grace is not counted
/// here, the kill starts at the deadline), a fifth of long TTLs. The leader waits
/// `LEASE_EXPIRY_MARGIN_MS` past the TTL before it reassigns: the relation between the two is
/// asserted in `baton_proto::limits`.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(
        baton_proto::limits::AGENT_LEASE_SAFETY_MARGIN_MS_MIN,
    ))
}

/// When the agent must have stopped an attempt whose lease was last renewed from `base`.
pub fn deadline_from(base: Instant, ttl: Duration) -> Instant {
    base + ttl.saturating_sub(safety_margin(ttl))
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
}

#[derive(Debug)]
struct SentHeartbeat {
    seq: u64,
    sent_at: Instant,
    attempts: Vec<u64>,
}

/// The leases of the attempts this agent runs, and the heartbeats awaiting an ack.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<u64, Lease>,
    heartbeats: VecDeque<SentHeartbeat>,
}

impl LeaseTable {
    pub fn new() -> LeaseTable {
        LeaseTable::default()
    }

    /// An Assignment arrived at `now`: the leader granted the lease no earlier than it sent
    /// the assignment, so counting from its arrival is safe only because the margin covers the
    /// one-way delay; the leader's own clock starts when it commits the assignment, earlier.
    pub fn grant(&mut self, attempt_id: u64, ttl: Duration, now: Instant) {
        self.leases.insert(
            attempt_id,
            Lease {
                ttl,
                deadline: deadline_from(now, ttl),
            },
        );
    }

    /// The attempt ended or was stopped: it no longer needs renewing.
    pub fn remove(&mut self, attempt_id: u64) -> bool {
        self.leases.remove(&attempt_id).is_some()
    }

    pub fn contains(&self, attempt_id: u64) -> bool {
        self.leases.contains_key(&attempt_id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Leased attempts, sorted (heartbeats list them in a stable order).
    pub fn attempts(&self) -> Vec<u64> {
        let mut attempts: Vec<u64> = self.leases.keys().copied().collect();
        attempts.sort_unstable();
        attempts
    }

    pub fn deadline(&self, attempt_id: u64) -> Option<Instant> {
        self.leases.get(&attempt_id).map(|lease| lease.deadline)
    }

    /// The earliest deadline, for the timer that wakes the agent to enforce it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|lease| lease.deadline).min()
    }

    /// A heartbeat with sequence number `seq` is being sent at `now`. Returns the attempts it
    /// lists: every leased attempt.
    pub fn heartbeat_sent(&mut self, seq: u64, now: Instant) -> Vec<u64> {
        let attempts = self.attempts();
        if self.heartbeats.len() >= HEARTBEATS_IN_FLIGHT_MAX {
            self.heartbeats.pop_front();
        }
        self.heartbeats.push_back(SentHeartbeat {
            seq,
            sent_at: now,
            attempts: attempts.clone(),
        });
        attempts
    }

    /// When the oldest heartbeat still awaiting its ack was sent, if any awaits one.
    pub fn oldest_unacked(&self) -> Option<Instant> {
        self.heartbeats.front().map(|sent| sent.sent_at)
    }

    /// The leader acknowledged heartbeat `seq`, renewing `renewed`. Renewed attempts get a
    /// deadline counted from that heartbeat's send time. An attempt that heartbeat listed but
    /// the ack does not is no longer leased to us: it is removed and returned, to be killed.
    /// Attempts assigned after that heartbeat was sent are not judged by it. An ack for a
    /// heartbeat we do not remember (another session's, or one forgotten) changes nothing.
    pub fn acknowledged(&mut self, seq: u64, renewed: &[u64]) -> Vec<u64> {
        let Some(position) = self.heartbeats.iter().position(|sent| sent.seq == seq) else {
            return Vec::new();
        };
        // Acks come in order: this one answers for every older heartbeat too.
        let Some(sent) = self.heartbeats.drain(..=position).next_back() else {
            return Vec::new();
        };
        let renewed: HashSet<u64> = renewed.iter().copied().collect();
        let mut lost = Vec::new();
        for attempt_id in sent.attempts {
            let Some(lease) = self.leases.get_mut(&attempt_id) else {
                continue; // finished or stopped since
            };
            if renewed.contains(&attempt_id) {
                // `max`: a late ack of an older heartbeat must not shorten a newer renewal.
                lease.deadline = lease.deadline.max(deadline_from(sent.sent_at, lease.ttl));
            } else {
                self.leases.remove(&attempt_id);
                lost.push(attempt_id);
            }
        }
        lost
    }

    /// Removes and returns the attempts whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<u64> {
        let mut expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(attempt_id, _)| *attempt_id)
            .collect();
        expired.sort_unstable();
        for attempt_id in &expired {
            self.leases.remove(attempt_id);
        }
        expired
    }

    /// A new session numbers its heartbeats from 1 again: acks of the old one can never come.
    pub fn new_session(&mut self) {
        self.heartbeats.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn margin_is_a_fifth_but_at_least_half_a_second() {
        assert_eq!(safety_margin(ms(5000)), ms(1000));
        assert_eq!(safety_margin(ms(60_000)), ms(12_000));
        assert_eq!(safety_margin(ms(1000)), ms(500));
        assert_eq!(safety_margin(ms(2000)), ms(500));
        let start = Instant::now();
        assert_eq!(deadline_from(start, ms(5000)), start + ms(4000));
        // A TTL below the margin leaves nothing: stop at once rather than outlive the lease.
        assert_eq!(deadline_from(start, ms(300)), start);
    }

    #[test]
    fn a_grant_counts_from_the_assignment_and_expires() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        table.grant(8, ms(10_000), t0 + ms(100));
        assert_eq!(table.deadline(7), Some(t0 + ms(4000)));
        assert_eq!(table.next_deadline(), Some(t0 + ms(4000)));
        assert!(table.take_expired(t0 + ms(3999)).is_empty());
        assert_eq!(table.take_expired(t0 + ms(4000)), [7]);
        assert!(!table.contains(7));
        assert_eq!(table.next_deadline(), Some(t0 + ms(8100)));
    }

    #[test]
    fn the_oldest_unacked_heartbeat_is_tracked_until_acked_or_a_new_session() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        assert_eq!(table.oldest_unacked(), None);
        table.heartbeat_sent(1, t0);
        table.heartbeat_sent(2, t0 + ms(300));
        table.heartbeat_sent(3, t0 + ms(600));
        assert_eq!(table.oldest_unacked(), Some(t0));
        // An ack answers for every older heartbeat.
        table.acknowledged(2, &[]);
        assert_eq!(table.oldest_unacked(), Some(t0 + ms(600)));
        table.new_session();
        assert_eq!(table.oldest_unacked(), None);
    }

    #[test]
    fn an_ack_renews_from_the_heartbeats_send_time() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        assert_eq!(table.heartbeat_sent(1, t0 + ms(1000)), [7]);
        // The ack arrives much later: the renewal still counts from the send time.
        assert!(table.acknowledged(1, &[7]).is_empty());
        assert_eq!(table.deadline(7), Some(t0 + ms(5000)));
        assert!(table.take_expired(t0 + ms(4999)).is_empty());
        assert_eq!(table.take_expired(t0 + ms(5000)), [7]);
    }

    #[test]
    fn an_attempt_missing_from_an_ack_is_lost() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        table.grant(8, ms(5000), t0);
        table.heartbeat_sent(1, t0 + ms(10));
        assert_eq!(table.acknowledged(1, &[8]), [7]);
        assert!(!table.contains(7));
        assert!(table.contains(8));
    }

    #[test]
    fn attempts_newer_than_the_heartbeat_are_not_judged_by_its_ack() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        table.heartbeat_sent(1, t0);
        table.grant(9, ms(5000), t0 + ms(5)); // assigned after heartbeat 1 left
        assert!(table.acknowledged(1, &[7]).is_empty());
        assert!(table.contains(9));
        assert_eq!(table.deadline(9), Some(t0 + ms(4005)));
    }

    #[test]
    fn finished_attempts_and_unknown_acks_are_ignored() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        table.heartbeat_sent(1, t0);
        table.remove(7); // reported before the ack came
        assert!(table.acknowledged(1, &[]).is_empty());
        table.grant(8, ms(5000), t0);
        assert!(table.acknowledged(42, &[]).is_empty());
        assert!(table.contains(8));
    }

    #[test]
    fn a_late_ack_never_shortens_a_renewal_and_older_heartbeats_are_dropped() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        table.heartbeat_sent(1, t0 + ms(1000));
        table.heartbeat_sent(2, t0 + ms(2000));
        table.acknowledged(2, &[7]);
        assert_eq!(table.deadline(7), Some(t0 + ms(6000)));
        // Heartbeat 1 was answered for by ack 2: its own ack, if it came now, is unknown.
        assert!(table.acknowledged(1, &[]).is_empty());
        assert!(table.contains(7));
        assert_eq!(table.deadline(7), Some(t0 + ms(6000)));
    }

    #[test]
    fn a_new_session_forgets_heartbeats_in_flight_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut table = LeaseTable::new();
        table.grant(7, ms(5000), t0);
        for seq in 1..=(HEARTBEATS_IN_FLIGHT_MAX as u64 + 10) {
            table.heartbeat_sent(seq, t0);
        }
        assert_eq!(table.heartbeats.len(), HEARTBEATS_IN_FLIGHT_MAX);
        table.new_session();
        // Seq 1 of the new session is not the old session's seq 1.
        assert!(table.acknowledged(1, &[]).is_empty());
        assert!(table.contains(7));
    }
}
