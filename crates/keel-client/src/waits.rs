//! The waits between tries while following the primary through a failover.

use std::time::Duration;

use keel_resilience::{Backoff, Jitter};

/// The first wait between tries, and the longest: a failover at the default settings
/// takes about a second, so waits beyond that would only add to it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// See [`BACKOFF_BASE`].
pub const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// The waits of one operation's retries: capped exponential backoff with full jitter, so
/// that many clients thrown off by the same failover do not come back in step, and never
/// shorter than the server's `Retry-After`.
#[derive(Debug, Clone)]
pub struct Waits {
    backoff: Backoff,
    /// Retries so far.
    retries: u32,
}

impl Default for Waits {
    fn default() -> Self {
        Self::new()
    }
}

impl Waits {
    /// From [`BACKOFF_BASE`] up to [`BACKOFF_CAP`].
    pub fn new() -> Self {
        Waits {
            backoff: Backoff::exponential(BACKOFF_BASE, BACKOFF_CAP),
            retries: 0,
        }
    }

    /// The wait before the next try, for a jitter draw `unit` in `[0, 1]`.
    pub fn next(&mut self, retry_after: Option<Duration>, unit: f64) -> Duration {
        let wait = self
            .backoff
            .delay(self.retries, Jitter::Full, unit, retry_after);
        self.retries = self.retries.saturating_add(1);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let mut waits = Waits::new();
        let all: Vec<_> = (0..6).map(|_| waits.next(None, 1.0)).collect();
        assert_eq!(
            all,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn full_jitter_draws_below_the_ceiling() {
        let mut waits = Waits::new();
        assert_eq!(waits.next(None, 0.0), ms(0));
        assert_eq!(waits.next(None, 0.5), ms(100));
    }

    #[test]
    fn retry_after_is_a_floor_never_a_cap() {
        let mut waits = Waits::new();
        assert_eq!(waits.next(Some(ms(1000)), 0.3), ms(1000));
        let mut waits = Waits::new();
        waits.next(None, 0.0);
        waits.next(None, 0.0);
        // Ceiling 400 ms, drawn at 0.5: a shorter Retry-After does not shorten it.
        assert_eq!(waits.next(Some(ms(100)), 0.5), ms(200));
    }

    #[test]
    fn many_retries_stay_within_the_cap() {
        let mut waits = Waits::new();
        for _ in 0..100 {
            assert!(waits.next(None, 1.0) <= BACKOFF_CAP);
        }
    }
}
