//! Retry and poll timing, as small pure functions: when to poll next, and how long to back off
//! after a failure. Used by the engine, the Google store's retries, the notifiers and the
//! event reporter. Randomness comes in as a number in `[0, 1)` so the functions can be tested
//! as tables; [`unit_random`] supplies it in the agent.

use std::time::Duration;

/// First wait after a failure; it doubles with each failure after that.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The wait before the next poll: `poll`, spread by `±jitter` so that a fleet that started
/// together does not poll the store in lockstep.
pub fn poll_delay(poll: Duration, jitter: f64, unit: f64) -> Duration {
    poll.mul_f64(1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0))
}

/// The first wait of a policy after the agent starts: anywhere in one poll interval, so that a
/// fleet that started together is spread over the interval at once.
pub fn first_poll_delay(poll: Duration, unit: f64) -> Duration {
    poll.mul_f64(unit.clamp(0.0, 1.0))
}

/// The wait after `failures` consecutive failures (1 or more): exponential from
/// [`FIRST_RETRY`], never longer than `cap`, with "equal jitter" (half fixed, half random) so
/// that retries spread out but never collapse to zero.
pub fn retry_delay(failures: u32, cap: Duration, unit: f64) -> Duration {
    retry_delay_from(FIRST_RETRY, failures, cap, unit)
}

/// [`retry_delay`] with another first wait: Google's retry policy for Secret Manager starts at
/// 2 s.
pub fn retry_delay_from(first: Duration, failures: u32, cap: Duration, unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let base = first.saturating_mul(1 << exponent).min(cap);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A uniformly distributed number in `[0, 1)` from the system's random generator.
pub fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    // The system generator does not fail on Linux; should it ever, no jitter is the safe
    // degradation for a timing decision.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn poll_delays() {
        let cases = [(0.1, 0.0, 54.0), (0.1, 0.5, 60.0), (0.1, 1.0, 66.0), (0.0, 0.9, 60.0), (0.5, 0.0, 30.0)];
        for (jitter, unit, want) in cases {
            assert_eq!(poll_delay(MIN, jitter, unit).as_secs_f64(), want, "jitter {jitter} unit {unit}");
        }
    }

    #[test]
    fn first_poll_delays_spread_over_the_whole_interval() {
        assert_eq!(first_poll_delay(MIN, 0.0), Duration::ZERO);
        assert_eq!(first_poll_delay(MIN, 0.25).as_secs_f64(), 15.0);
        assert_eq!(first_poll_delay(MIN, 1.0), MIN);
    }

    #[test]
    fn retry_delays() {
        // (failures, unit, seconds)
        let cases = [
            (1, 1.0, 1.0),
            (1, 0.0, 0.5),
            (2, 1.0, 2.0),
            (3, 1.0, 4.0),
            (6, 1.0, 32.0),
            (7, 1.0, 60.0),
            (7, 0.0, 30.0),
            (1000, 1.0, 60.0),
        ];
        for (failures, unit, want) in cases {
            assert_eq!(retry_delay(failures, MIN, unit).as_secs_f64(), want, "failures {failures} unit {unit}");
        }
    }

    #[test]
    fn google_retry_policy() {
        // initialBackoff 2s, multiplier 2, maxBackoff 60s (before jitter).
        let waits: Vec<f64> =
            (1..=6).map(|n| retry_delay_from(Duration::from_secs(2), n, MIN, 1.0).as_secs_f64()).collect();
        assert_eq!(waits, [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]);
    }

    #[test]
    fn random_units_stay_in_range() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
