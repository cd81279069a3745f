//! How long to wait before a retry: constant or capped exponential backoff, with or without
//! full jitter, raised to what the server asked for in `Retry-After`.
//!
//! Everything here is pure arithmetic. The random draw is an argument (a number in
//! `[0, 1]`), so a test can pin every delay exactly; [`crate::RetryPolicy`] supplies the
//! real draw.

use std::time::Duration;

/// The shape of the waits between attempts, before jitter.
///
/// Retries are numbered from 0: retry 0 is the wait after the first failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same wait before every retry.
    Constant(Duration),
    /// `min(cap, base · 2^retry)`: doubles after every failure, never beyond `cap`.
    Exponential {
        /// The wait before retry 0.
        base: Duration,
        /// The longest wait, however many retries came before.
        cap: Duration,
    },
}

impl Default for Backoff {
    /// Exponential from 100 ms, capped at 10 s: quick enough for a blip, and with full
    /// jitter the retries of many clients spread out instead of arriving together.
    fn default() -> Self {
        Backoff::Exponential {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Capped exponential backoff starting at `base`.
    pub fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff::Exponential { base, cap }
    }

    /// The longest wait before retry number `retry` (0-based), before jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        match *self {
            Backoff::Constant(wait) => wait,
            Backoff::Exponential { base, cap } => doubled(base, retry, cap),
        }
    }

    /// The wait before retry number `retry`: the ceiling, jittered with `unit` (a draw
    /// in `[0, 1]`), then raised to `retry_after` if the server asked for longer.
    pub fn delay(
        &self,
        retry: u32,
        jitter: Jitter,
        unit: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        let wait = jitter.apply(self.ceiling(retry), unit);
        honour_retry_after(wait, retry_after)
    }
}

/// `base · 2^times`, or `cap` if that is more. Doubling stops as soon as the cap is
/// reached, so no retry number can overflow; a nonzero base passes any cap within 128
/// doublings (a `Duration` holds less than 2^128 ns).
fn doubled(base: Duration, times: u32, cap: Duration) -> Duration {
    let mut wait = base;
    for _ in 0..times.min(128) {
        if wait >= cap {
            break;
        }
        wait = wait.checked_mul(2).unwrap_or(cap);
    }
    wait.min(cap)
}

/// How the random draw spreads a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The wait is exactly the ceiling. Clients that failed together retry together.
    None,
    /// Full jitter: a uniform draw in `[0, ceiling]`. Of the schemes compared in the AWS
    /// Architecture Blog's "Exponential Backoff and Jitter", this one does the least total
    /// work and finishes soonest under contention, so it is the default.
    #[default]
    Full,
}

impl Jitter {
    /// The wait for a ceiling and a draw `unit` in `[0, 1]` (clamped into that range).
    pub fn apply(self, ceiling: Duration, unit: f64) -> Duration {
        match self {
            Jitter::None => ceiling,
            // Through f64 and back can round past the ceiling (or past Duration::MAX);
            // the ceiling is the most a wait may be either way.
            Jitter::Full => Duration::try_from_secs_f64(ceiling.as_secs_f64() * clamp_unit(unit))
                .map_or(ceiling, |wait| wait.min(ceiling)),
        }
    }
}

/// The wait, raised to what the server asked for: a `Retry-After` is a floor, never a cap.
pub fn honour_retry_after(wait: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(wait, |asked| wait.max(asked))
}

fn clamp_unit(unit: f64) -> f64 {
    if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn exponential_doubles_until_the_cap() {
        let backoff = Backoff::exponential(MS(100), MS(1000));
        let ceilings: Vec<_> = (0..7).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [
                MS(100),
                MS(200),
                MS(400),
                MS(800),
                MS(1000),
                MS(1000),
                MS(1000)
            ]
        );
    }

    #[test]
    fn exponential_survives_huge_retry_numbers() {
        let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(31), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(64), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
        let tiny = Backoff::exponential(Duration::from_nanos(1), Duration::from_secs(10));
        assert_eq!(tiny.ceiling(33), Duration::from_nanos(1 << 33));
        assert_eq!(tiny.ceiling(40), Duration::from_secs(10));
        let unbounded = Backoff::exponential(Duration::from_secs(1), Duration::MAX);
        assert_eq!(unbounded.ceiling(200), Duration::MAX);
        assert_eq!(
            Backoff::exponential(Duration::ZERO, MS(5)).ceiling(500),
            MS(0)
        );
    }

    #[test]
    fn full_jitter_never_exceeds_the_largest_ceiling() {
        assert_eq!(Jitter::Full.apply(Duration::MAX, 1.0), Duration::MAX);
        assert!(Jitter::Full.apply(Duration::MAX, 0.5) < Duration::MAX);
    }

    #[test]
    fn constant_is_the_same_every_time() {
        let backoff = Backoff::Constant(MS(250));
        let delays: Vec<_> = (0..4)
            .map(|n| backoff.delay(n, Jitter::None, 0.3, None))
            .collect();
        assert_eq!(delays, [MS(250); 4]);
    }

    #[test]
    fn full_jitter_scales_the_ceiling_by_the_draw() {
        let backoff = Backoff::exponential(MS(100), MS(1000));
        let draws = [0.0, 0.5, 0.25, 1.0, 0.5];
        let delays: Vec<_> = draws
            .iter()
            .enumerate()
            .map(|(n, &unit)| backoff.delay(n as u32, Jitter::Full, unit, None))
            .collect();
        // ceilings 100, 200, 400, 800, 1000 times the draws
        assert_eq!(delays, [MS(0), MS(100), MS(100), MS(800), MS(500)]);
    }

    #[test]
    fn full_jitter_clamps_draws_outside_the_unit_range() {
        assert_eq!(Jitter::Full.apply(MS(400), 1.5), MS(400));
        assert_eq!(Jitter::Full.apply(MS(400), -0.5), MS(0));
        assert_eq!(Jitter::Full.apply(MS(400), f64::NAN), MS(0));
    }

    #[test]
    fn retry_after_raises_a_shorter_wait() {
        let backoff = Backoff::exponential(MS(100), MS(1000));
        let wait = backoff.delay(0, Jitter::Full, 0.5, Some(Duration::from_secs(3)));
        assert_eq!(wait, Duration::from_secs(3));
    }

    #[test]
    fn retry_after_never_shortens_a_longer_wait() {
        let backoff = Backoff::Constant(Duration::from_secs(5));
        let wait = backoff.delay(0, Jitter::None, 0.0, Some(Duration::from_secs(1)));
        assert_eq!(wait, Duration::from_secs(5));
    }

    #[test]
    fn default_is_capped_exponential_with_full_jitter() {
        assert_eq!(
            Backoff::default(),
            Backoff::exponential(MS(100), Duration::from_secs(10))
        );
        assert_eq!(Jitter::default(), Jitter::Full);
    }
}
