//! Reconnect backoff: exponential from `initial`, capped, with jitter so that agents cut off
//! together (a node died) do not reconnect together.

use std::time::Duration;

/// The agent's reconnect backoff. `Default`: 50 ms doubling to a 2 s cap, so that a leader
/// election (about 1.5 s with conservative Raft timeouts) costs a handful of tries.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff_delay(self.initial, self.max, self.failures, random_u64())
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// `initial × 2^(failures − 1)`, capped at `max`, then jittered to between half and all of it
/// by `random` (pure, so the bounds are testable).
pub fn backoff_delay(initial: Duration, max: Duration, failures: u32, random: u64) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let base = initial.saturating_mul(1 << exponent).min(max);
    let half_ms = (base.as_millis() / 2) as u64;
    Duration::from_millis(half_ms + random % (half_ms + 1))
}

/// Randomness for jitter only; any failure degrades to the clock.
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| u64::from(elapsed.subsec_nanos()))
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        // `random` = u64::MAX % (half + 1) varies; the extremes are random 0 and half.
        let bases = [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (index, base) in bases.iter().enumerate() {
            let failures = index as u32 + 1;
            let low = backoff_delay(MS(50), MS(2000), failures, 0);
            let high = backoff_delay(MS(50), MS(2000), failures, base / 2);
            assert_eq!(low, MS(base / 2), "failures {failures}");
            assert_eq!(high, MS(base / 2 * 2), "failures {failures}");
        }
    }

    #[test]
    fn never_exceeds_the_cap_whatever_the_randomness_or_count() {
        for failures in [1, 10, 31, 32, 1000, u32::MAX] {
            for random in [0, 1, 999, u64::MAX] {
                let delay = backoff_delay(MS(50), MS(2000), failures, random);
                assert!(delay <= MS(2000), "{failures} {random}: {delay:?}");
                assert!(delay >= MS(25), "{failures} {random}: {delay:?}");
            }
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::default();
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= MS(1000));
        backoff.reset();
        assert!(backoff.next_delay() <= MS(50));
        assert_eq!(backoff.failures(), 1);
    }
}
