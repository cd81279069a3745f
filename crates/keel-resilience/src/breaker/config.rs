//! The settings of a circuit breaker, with defaults and their checks.

use std::time::Duration;

use crate::error::{ConfigError, check_percent, check_positive};

/// The largest count window: it is allocated up front, two bytes a call.
pub const MAX_COUNT_WINDOW: u32 = 1_000_000;

/// Which recent calls the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls, however old.
    Count(u32),
    /// The calls of the last duration, aged out a tenth of the duration at a time.
    Time(Duration),
}

/// How a [`crate::CircuitBreaker`] decides to open, how long it stays open and how it
/// probes before closing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// The calls the rates are computed over.
    pub window: Window,
    /// Open when at least this percentage of the window's calls failed.
    pub failure_rate_threshold: f64,
    /// Open when at least this percentage of the window's calls were slow.
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long is slow, whether it succeeded or failed.
    pub slow_call_duration: Duration,
    /// No rate is judged over fewer calls than this (with a count window, over fewer than
    /// `min(minimum_calls, n)`).
    pub minimum_calls: u32,
    /// Consecutive-failures mode: when set, open after this many failures in a row
    /// instead of on the failure rate, and reopen on the first failed trial call. The
    /// slow-call rate still applies.
    pub consecutive_failures: Option<u32>,
    /// How long the breaker stays open before letting trial calls through.
    pub wait_in_open: Duration,
    /// How many trial calls half-open lets through; their results decide whether to
    /// close or reopen.
    pub permitted_half_open_calls: u32,
}

impl Default for Config {
    /// A window of the last 100 calls; open at 50% failures or when every call is slow
    /// (5 s or more), judged over at least 20 calls; stay open 5 s; then 3 trial calls.
    ///
    /// 100 calls and 50% are resilience4j's defaults. A minimum of 20 calls rather than
    /// its 100, so that a low-traffic client is not left unprotected for long, while 1
    /// failure in 2 calls is still not taken as a 50% failure rate. Five seconds open (Polly's break
    /// duration) is long enough for a struggling dependency to shed its backlog and short
    /// enough that a recovered one is soon used again. Three trial calls keep the probe
    /// load small.
    fn default() -> Self {
        Config {
            window: Window::Count(100),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(5),
            minimum_calls: 20,
            consecutive_failures: None,
            wait_in_open: Duration::from_secs(5),
            permitted_half_open_calls: 3,
        }
    }
}

impl Config {
    /// Checks every setting; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            Window::Count(n) if n > MAX_COUNT_WINDOW => {
                return Err(ConfigError::new(
                    "window",
                    format!("a count window holds at most {MAX_COUNT_WINDOW} calls, got {n}"),
                ));
            }
            Window::Count(n) => check_positive("window", u64::from(n))?,
            Window::Time(d) if d < Duration::from_millis(10) => {
                return Err(ConfigError::new(
                    "window",
                    format!("a time window must be at least 10 ms, got {d:?}"),
                ));
            }
            Window::Time(_) => {}
        }
        check_percent("failure_rate_threshold", self.failure_rate_threshold)?;
        check_percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        check_positive("minimum_calls", u64::from(self.minimum_calls))?;
        if let Some(n) = self.consecutive_failures {
            check_positive("consecutive_failures", u64::from(n))?;
        }
        check_positive(
            "permitted_half_open_calls",
            u64::from(self.permitted_half_open_calls),
        )
    }

    /// The fewest calls a rate is judged over.
    pub(crate) fn effective_minimum_calls(&self) -> u32 {
        match self.window {
            Window::Count(n) => self.minimum_calls.min(n),
            Window::Time(_) => self.minimum_calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let bad = [
            (
                Config {
                    window: Window::Count(0),
                    ..Config::default()
                },
                "window",
            ),
            (
                Config {
                    window: Window::Count(MAX_COUNT_WINDOW + 1),
                    ..Config::default()
                },
                "window",
            ),
            (
                Config {
                    window: Window::Time(Duration::from_millis(1)),
                    ..Config::default()
                },
                "window",
            ),
            (
                Config {
                    failure_rate_threshold: 0.0,
                    ..Config::default()
                },
                "failure_rate_threshold",
            ),
            (
                Config {
                    slow_call_rate_threshold: 101.0,
                    ..Config::default()
                },
                "slow_call_rate_threshold",
            ),
            (
                Config {
                    minimum_calls: 0,
                    ..Config::default()
                },
                "minimum_calls",
            ),
            (
                Config {
                    consecutive_failures: Some(0),
                    ..Config::default()
                },
                "consecutive_failures",
            ),
            (
                Config {
                    permitted_half_open_calls: 0,
                    ..Config::default()
                },
                "permitted_half_open_calls",
            ),
        ];
        for (config, field) in bad {
            assert_eq!(config.validate().map_err(|e| e.field), Err(field));
        }
    }

    #[test]
    fn error_says_what_is_wrong() {
        let config = Config {
            failure_rate_threshold: 150.0,
            ..Config::default()
        };
        assert_eq!(
            config.validate().map_err(|e| e.to_string()),
            Err(
                "invalid failure_rate_threshold: must be above 0 and at most 100 (a percentage), got 150"
                    .to_string()
            )
        );
    }

    #[test]
    fn count_window_caps_minimum_calls() {
        let config = Config {
            window: Window::Count(5),
            minimum_calls: 20,
            ..Config::default()
        };
        assert_eq!(config.effective_minimum_calls(), 5);
    }
}
