//! A retry budget: retries allowed up to a share of recent requests, plus a small floor.
//!
//! Retries multiply load exactly when a service can least take it: with 3 attempts per
//! call, a dependency that fails everything sees three times its normal traffic. A budget
//! bounds that multiplication for the whole client, not per call: over a sliding window
//! (10 s by default), retries may number at most `ratio` of the requests (20%) plus
//! `min_per_sec` per second of window (3/s), so a quiet client can still retry at all.
//! This is the scheme of Finagle, Envoy and tower's `TpsBudget`, and what the AWS
//! Builders' Library recommends over per-call attempt limits alone.
//!
//! Every original request calls [`RetryBudget::deposit`]; every retry first asks
//! [`RetryBudget::try_withdraw`] and is not made when it answers `false`. Time comes from
//! `tokio::time::Instant`, so a paused test clock drives the window; the `_at` methods take
//! the instant explicitly.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ConfigError;

/// The window is kept as this many buckets, so it slides a tenth at a time.
const BUCKETS: usize = 10;

/// The settings of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request in the window, as a fraction (0.2 = 20%).
    pub ratio: f64,
    /// Retries allowed per second of window even with no requests at all.
    pub min_per_sec: u32,
    /// How far back requests and retries count.
    pub window: Duration,
}

impl Default for BudgetConfig {
    /// 20% of requests plus 3 retries per second, over 10 s. With 20%, a total outage
    /// raises a busy client's load on its dependency by at most a fifth.
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_sec: 3,
            window: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// Checks every setting; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.ratio.is_finite() && self.ratio >= 0.0) {
            return Err(ConfigError::new(
                "ratio",
                format!("must be a fraction of 0 or more, got {}", self.ratio),
            ));
        }
        if self.window < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "window",
                format!("must be at least 10 ms, got {:?}", self.window),
            ));
        }
        Ok(())
    }

    /// Retries the floor alone allows over one window.
    fn reserve(&self) -> f64 {
        f64::from(self.min_per_sec) * self.window.as_secs_f64()
    }
}

/// How a budget stands at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSnapshot {
    /// Requests deposited within the window.
    pub requests: u64,
    /// Retries withdrawn within the window.
    pub retries: u64,
    /// Retries still allowed right now.
    pub remaining: u64,
}

/// A retry budget shared by every call of a client (wrap it in an `Arc`).
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    origin: Instant,
    bucket_len: Duration,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time since `origin` this bucket counts; stale slices are reset.
    index: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    /// A budget with these settings, its window starting now.
    pub fn new(config: BudgetConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(RetryBudget {
            config,
            origin: Instant::now(),
            bucket_len: config.window / BUCKETS as u32,
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        })
    }

    /// The settings this budget was made with.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Records one original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Records one original request made at `now`.
    pub fn deposit_at(&self, now: Instant) {
        let index = self.index_of(now);
        let mut buckets = self.lock();
        current_bucket(&mut buckets, index).requests += 1;
    }

    /// Takes one retry from the budget; `false` means the retry must not be made.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// Takes one retry from the budget at `now`.
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let index = self.index_of(now);
        let mut buckets = self.lock();
        if self.remaining(&buckets, index) == 0 {
            return false;
        }
        current_bucket(&mut buckets, index).retries += 1;
        true
    }

    /// Requests, retries and what is left, as of now.
    pub fn snapshot(&self) -> BudgetSnapshot {
        self.snapshot_at(Instant::now())
    }

    /// Requests, retries and what is left, as of `now`.
    pub fn snapshot_at(&self, now: Instant) -> BudgetSnapshot {
        let index = self.index_of(now);
        let buckets = self.lock();
        let (requests, retries) = totals(&buckets, index);
        BudgetSnapshot {
            requests,
            retries,
            remaining: self.remaining(&buckets, index),
        }
    }

    fn remaining(&self, buckets: &[Bucket; BUCKETS], index: u64) -> u64 {
        let (requests, retries) = totals(buckets, index);
        // f64 → u64 saturates; the floor keeps a fraction of a retry from counting.
        let allowed = (self.config.ratio * requests as f64 + self.config.reserve()).floor() as u64;
        allowed.saturating_sub(retries)
    }

    fn index_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.bucket_len.as_nanos().max(1)) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Bucket; BUCKETS]> {
        // The counters stay consistent even if a holder panicked: every update is one add.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn current_bucket(buckets: &mut [Bucket; BUCKETS], index: u64) -> &mut Bucket {
    let bucket = &mut buckets[(index % BUCKETS as u64) as usize];
    if bucket.index != index {
        *bucket = Bucket {
            index,
            ..Bucket::default()
        };
    }
    bucket
}

fn totals(buckets: &[Bucket; BUCKETS], index: u64) -> (u64, u64) {
    buckets
        .iter()
        .filter(|b| b.index + (BUCKETS as u64) > index && b.index <= index)
        .fold((0, 0), |(req, ret), b| (req + b.requests, ret + b.retries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio,
            min_per_sec,
            window: Duration::from_secs(10),
        })
        .expect("valid budget")
    }

    fn withdraw_all(budget: &RetryBudget) -> u64 {
        let mut n = 0;
        while budget.try_withdraw() {
            n += 1;
            assert!(n < 10_000, "budget never ran out");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn floor_alone_allows_min_per_sec_times_window() {
        let budget = budget(0.2, 3);
        assert_eq!(withdraw_all(&budget), 30);
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_limited_to_the_ratio_of_requests() {
        let budget = budget(0.2, 0);
        for _ in 0..50 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 10);
        let snap = budget.snapshot();
        assert_eq!((snap.requests, snap.retries, snap.remaining), (50, 10, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_and_floor_add_up() {
        let budget = budget(0.2, 1);
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 20 + 10);
    }

    #[tokio::test(start_paused = true)]
    async fn new_requests_earn_new_retries() {
        let budget = budget(0.5, 0);
        budget.deposit();
        assert!(!budget.try_withdraw(), "half a retry is no retry");
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn spent_retries_come_back_once_they_leave_the_window() {
        let budget = budget(0.0, 1);
        assert_eq!(withdraw_all(&budget), 10);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!budget.try_withdraw(), "still inside the window");
        tokio::time::advance(Duration::from_millis(1)).await;
        // The first bucket (second 0) has left the window: its 10 retries are returned.
        assert_eq!(withdraw_all(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_stop_earning_retries() {
        let budget = budget(1.0, 0);
        for _ in 0..5 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!budget.try_withdraw());
        assert_eq!(budget.snapshot().requests, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides_bucket_by_bucket() {
        let budget = budget(1.0, 0);
        let start = Instant::now();
        for second in 0..10 {
            budget.deposit_at(start + Duration::from_secs(second));
        }
        let at = |s: u64| budget.snapshot_at(start + Duration::from_secs(s)).requests;
        assert_eq!([at(9), at(10), at(15), at(19), at(20)], [10, 9, 4, 0, 0]);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = RetryBudget::new(BudgetConfig {
            ratio: -1.0,
            ..BudgetConfig::default()
        })
        .expect_err("negative ratio");
        assert_eq!(err.field, "ratio");
        let err = RetryBudget::new(BudgetConfig {
            window: Duration::ZERO,
            ..BudgetConfig::default()
        })
        .expect_err("empty window");
        assert_eq!(
            err.to_string(),
            "invalid window: must be at least 10 ms, got 0ns"
        );
    }
}
