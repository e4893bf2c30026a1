//! What a valid step runs with once defaults fill the fields left at 0: its priority, lease
//! TTL, attempts, and the delay before each retry. The state machine uses these inside `apply`.

use crate::limits::*;
use crate::v1::{StepSpec, WorkflowSpec};

/// The priority a step is queued with: its own when set, else its workflow's; clamped to the
/// valid range so that an unvalidated spec cannot escape it.
pub fn effective_priority(step: &StepSpec, spec: &WorkflowSpec) -> i32 {
    step.priority
        .unwrap_or(spec.priority)
        .clamp(PRIORITY_MIN, PRIORITY_MAX)
}

/// The lease TTL of each attempt of `step`: its own, or [`LEASE_TTL_MS_DEFAULT`] when 0.
pub fn effective_lease_ttl_ms(step: &StepSpec) -> u64 {
    match step.lease_ttl_ms {
        0 => LEASE_TTL_MS_DEFAULT,
        ttl_ms => ttl_ms.clamp(LEASE_TTL_MS_MIN, LEASE_TTL_MS_MAX),
    }
}

/// Attempts `step` may have in all, the first included (at least 1).
pub fn effective_max_attempts(step: &StepSpec) -> u32 {
    let max_attempts = step.retry.as_ref().map_or(0, |retry| retry.max_attempts);
    max_attempts.clamp(1, MAX_ATTEMPTS_MAX)
}

/// How long to wait before the retry that follows failed attempt number `failed_attempts`
/// (1 for the first failure): `initial * multiplier^(failed_attempts - 1)`, capped at `max`,
/// with the defaults of [`crate::limits`] for fields left at 0.
///
/// Deterministic (plain IEEE multiplications in a fixed order), so the state machine can use
/// it inside `apply`.
pub fn backoff_delay_ms(step: &StepSpec, failed_attempts: u32) -> u64 {
    let backoff = step.retry.as_ref().and_then(|retry| retry.backoff.as_ref());
    let initial_ms = match backoff.map_or(0, |b| b.initial_ms) {
        0 => BACKOFF_INITIAL_MS_DEFAULT,
        ms => ms.min(BACKOFF_MS_MAX),
    };
    let max_ms = match backoff.map_or(0, |b| b.max_ms) {
        0 => BACKOFF_MAX_MS_DEFAULT.max(initial_ms),
        ms => ms.min(BACKOFF_MS_MAX),
    };
    let multiplier = backoff.map_or(0.0, |b| b.multiplier);
    // 0 is proto3's "not set"; NaN and infinities cannot pass validation but must not leak here.
    let multiplier = if multiplier == 0.0 || !multiplier.is_finite() {
        BACKOFF_MULTIPLIER_DEFAULT
    } else {
        multiplier.clamp(1.0, BACKOFF_MULTIPLIER_MAX)
    };
    let mut delay_ms = initial_ms as f64;
    // Bounded by MAX_ATTEMPTS_MAX iterations, and stops as soon as the cap is reached.
    for _ in 1..failed_attempts.min(MAX_ATTEMPTS_MAX) {
        if delay_ms >= max_ms as f64 {
            break;
        }
        delay_ms *= multiplier;
    }
    // `as` saturates on out-of-range floats; the cap keeps it in range anyway.
    (delay_ms as u64).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Backoff, RetryPolicy};
    use crate::validate::test_support::*;

    #[test]
    fn effective_values() {
        let mut s = spec(vec![step("a", &[]), step("b", &[])]);
        s.priority = 7;
        s.steps[1].priority = Some(-3);
        assert_eq!(effective_priority(&s.steps[0], &s), 7);
        assert_eq!(effective_priority(&s.steps[1], &s), -3);
        s.steps[1].priority = Some(i32::MAX);
        assert_eq!(effective_priority(&s.steps[1], &s), PRIORITY_MAX);

        let mut a = step("a", &[]);
        assert_eq!(effective_lease_ttl_ms(&a), LEASE_TTL_MS_DEFAULT);
        a.lease_ttl_ms = 12_000;
        assert_eq!(effective_lease_ttl_ms(&a), 12_000);
        assert_eq!(effective_max_attempts(&a), 1);
        a.retry = Some(RetryPolicy {
            max_attempts: 4,
            backoff: None,
        });
        assert_eq!(effective_max_attempts(&a), 4);
    }

    #[test]
    fn backoff_delays() {
        let mut a = step("a", &[]);
        // No policy: the defaults, 1s doubling up to 1m.
        let delays: Vec<u64> = (1..=8).map(|n| backoff_delay_ms(&a, n)).collect();
        assert_eq!(
            delays,
            [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
        );
        a.retry = Some(RetryPolicy {
            max_attempts: 5,
            backoff: Some(Backoff {
                initial_ms: 500,
                multiplier: 3.0,
                max_ms: 10_000,
            }),
        });
        let delays: Vec<u64> = (0..=5).map(|n| backoff_delay_ms(&a, n)).collect();
        assert_eq!(delays, [500, 500, 1500, 4500, 10_000, 10_000]);
        // An initial delay above the default cap is not cut down to it.
        a.retry = Some(RetryPolicy {
            max_attempts: 5,
            backoff: Some(Backoff {
                initial_ms: 300_000,
                ..Default::default()
            }),
        });
        assert_eq!(backoff_delay_ms(&a, 3), 300_000);
        assert_eq!(backoff_delay_ms(&a, u32::MAX), 300_000);
    }
}
