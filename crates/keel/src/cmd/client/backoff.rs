//! How long to wait before the next try: capped exponential backoff with full jitter,
//! never shorter than what the server asked for with `Retry-After`.
//!
//! Pure arithmetic with the random draw passed in, so the tests pin every value.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The waits of one operation's retries.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    base: Duration,
    cap: Duration,
    /// Retries so far.
    attempt: u32,
}

impl Backoff {
    pub(super) fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next try: a uniform draw from `[0, min(cap, base·2^n)]` (full
    /// jitter, so that many clients thrown off by the same failover do not come back in
    /// step), raised to `retry_after` when the server gave one. `unit` is the draw, in
    /// `[0, 1]`.
    pub(super) fn next(&mut self, retry_after: Option<Duration>, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => jittered.max(asked),
            None => jittered,
        }
    }
}

/// A draw in `[0, 1]` for the jitter.
///
/// Std's `RandomState` is seeded randomly per process and advanced per instance; that is
/// plenty for spreading retries, and saves the binary a random-number crate.
pub(super) fn jitter_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // The top 53 bits fill an f64's mantissa exactly.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as a number of seconds (the nodes send whole seconds; the HTTP-date form
/// is not used by keel and is ignored).
pub(super) fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: f64 = value?.trim().parse().ok()?;
    (secs.is_finite() && (0.0..=3600.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let waits: Vec<_> = (0..6).map(|_| b.next(None, 1.0)).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn jitter_draws_below_the_ceiling() {
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.next(None, 0.0), ms(0));
        assert_eq!(b.next(None, 0.5), ms(100));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.next(Some(ms(1000)), 0.3), ms(1000));
        // A Retry-After shorter than the draw does not shorten it.
        let mut b = Backoff::new(ms(1000), ms(4000));
        assert_eq!(b.next(Some(ms(100)), 0.5), ms(500));
    }

    #[test]
    fn many_retries_do_not_overflow() {
        let mut b = Backoff::new(ms(100), ms(1000));
        for _ in 0..100 {
            assert!(b.next(None, 1.0) <= ms(1000));
        }
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        assert_eq!(parse_retry_after(Some("1")), Some(ms(1000)));
        assert_eq!(parse_retry_after(Some(" 0.5 ")), Some(ms(500)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..=1.0).contains(&u), "{u}");
        }
    }
}
