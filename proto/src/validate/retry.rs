//! Rules for a step's retry policy: the attempt count and the backoff (multiplier, initial
//! and max delay). `effective` computes the delays a valid policy gives.

use super::SpecError;
use super::step::check_duration_max;
use crate::limits::*;
use crate::text::format_duration_ms;
use crate::v1::{Backoff, RetryPolicy};

pub(super) fn check_retry(i: usize, name: &str, retry: &RetryPolicy) -> Result<(), SpecError> {
    if retry.max_attempts > MAX_ATTEMPTS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].retry.max_attempts"),
            format!(
                "step {name} retry max_attempts {} is more than {MAX_ATTEMPTS_MAX}",
                retry.max_attempts
            ),
        ));
    }
    if let Some(backoff) = &retry.backoff {
        check_backoff(i, name, backoff)?;
    }
    Ok(())
}

fn check_backoff(i: usize, name: &str, backoff: &Backoff) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].retry.backoff.{field}");
    let multiplier = backoff.multiplier;
    // 0 is proto3's "not set": the default multiplier applies.
    if multiplier != 0.0 {
        if !multiplier.is_finite() {
            return Err(SpecError::new(
                at("multiplier"),
                format!("step {name} backoff multiplier {multiplier} is not a finite number"),
            ));
        }
        if !(1.0..=BACKOFF_MULTIPLIER_MAX).contains(&multiplier) {
            return Err(SpecError::new(
                at("multiplier"),
                format!(
                    "step {name} backoff multiplier {multiplier} is outside 1..={BACKOFF_MULTIPLIER_MAX}"
                ),
            ));
        }
    }
    check_duration_max(
        &at("initial_ms"),
        name,
        "backoff initial",
        backoff.initial_ms,
        BACKOFF_MS_MAX,
    )?;
    check_duration_max(
        &at("max_ms"),
        name,
        "backoff max",
        backoff.max_ms,
        BACKOFF_MS_MAX,
    )?;
    if backoff.max_ms != 0 && backoff.initial_ms > backoff.max_ms {
        return Err(SpecError::new(
            at("initial_ms"),
            format!(
                "step {name} backoff initial {} is longer than its max {}",
                format_duration_ms(backoff.initial_ms),
                format_duration_ms(backoff.max_ms)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_support::*;

    #[test]
    fn retry_rules() {
        let retrying = |max_attempts, backoff: Option<Backoff>| {
            one_step(|s| {
                s.retry = Some(RetryPolicy {
                    max_attempts,
                    backoff,
                })
            })
        };
        let backoff = |initial_ms, multiplier, max_ms| {
            Some(Backoff {
                initial_ms,
                multiplier,
                max_ms,
            })
        };
        assert_valid(&retrying(3, backoff(1000, 2.0, 30_000)));
        assert_valid(&retrying(MAX_ATTEMPTS_MAX, None));
        assert_valid(&retrying(0, backoff(0, 0.0, 0)));
        assert_valid(&retrying(2, backoff(5000, 1.0, 0)));
        assert_invalid(
            &retrying(MAX_ATTEMPTS_MAX + 1, None),
            "steps[0].retry.max_attempts",
            "step \"only\" retry max_attempts 101 is more than 100",
        );
        for (multiplier, message) in [
            (
                f64::NAN,
                "step \"only\" backoff multiplier NaN is not a finite number",
            ),
            (
                f64::INFINITY,
                "step \"only\" backoff multiplier inf is not a finite number",
            ),
            (
                0.5,
                "step \"only\" backoff multiplier 0.5 is outside 1..=100",
            ),
            (
                -2.0,
                "step \"only\" backoff multiplier -2 is outside 1..=100",
            ),
            (
                100.5,
                "step \"only\" backoff multiplier 100.5 is outside 1..=100",
            ),
        ] {
            assert_invalid(
                &retrying(3, backoff(0, multiplier, 0)),
                "steps[0].retry.backoff.multiplier",
                message,
            );
        }
        assert_invalid(
            &retrying(3, backoff(60_000, 2.0, 30_000)),
            "steps[0].retry.backoff.initial_ms",
            "step \"only\" backoff initial 1m is longer than its max 30s",
        );
        assert_invalid(
            &retrying(3, backoff(BACKOFF_MS_MAX + 1, 2.0, 0)),
            "steps[0].retry.backoff.initial_ms",
            "step \"only\" backoff initial 1d1ms is longer than the maximum 1d",
        );
        assert_invalid(
            &retrying(3, backoff(0, 2.0, BACKOFF_MS_MAX + 1)),
            "steps[0].retry.backoff.max_ms",
            "step \"only\" backoff max 1d1ms is longer than the maximum 1d",
        );
    }
}
