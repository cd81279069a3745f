//! A circuit breaker's settings written on one line, as flags take them:
//! `failure-rate=50,window=10,open=5s` (`keel client fetch --breaker`,
//! `keel service --redis-breaker`).
//!
//! | key | setting of [`keel_resilience::Config`] | example |
//! |---|---|---|
//! | `failure-rate` | `failure_rate_threshold` (percent) | `failure-rate=50` |
//! | `window` | `window`: a number of calls, or a duration | `window=10`, `window=30s` |
//! | `min-calls` | `minimum_calls` | `min-calls=5` |
//! | `failures` | `consecutive_failures`: open after N failures in a row | `failures=1` |
//! | `open` | `wait_in_open` | `open=5s` |
//! | `half-open` | `permitted_half_open_calls` | `half-open=1` |
//! | `slow` | `slow_call_duration` | `slow=1s` |
//! | `slow-rate` | `slow_call_rate_threshold` (percent) | `slow-rate=80` |
//!
//! Keys left out keep the library's defaults; the result is checked with
//! [`keel_resilience::Config::validate`], so a value out of range is named.

use keel_resilience::{Config, Window};

/// The keys [`parse`] knows, for error messages.
const KEYS: &str = "failure-rate, window, min-calls, failures, open, half-open, slow, slow-rate";

/// Parses `key=value,key=value` into a breaker configuration (see the module docs).
pub fn parse(spec: &str) -> Result<Config, String> {
    let mut config = Config::default();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "expected key=value in the breaker setting {part:?} (keys: {KEYS})"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "failure-rate" => config.failure_rate_threshold = percent(key, value)?,
            "slow-rate" => config.slow_call_rate_threshold = percent(key, value)?,
            "window" => {
                config.window = if value.chars().all(|c| c.is_ascii_digit()) {
                    Window::Count(count(key, value)?)
                } else {
                    Window::Time(duration(key, value)?)
                }
            }
            "min-calls" => config.minimum_calls = count(key, value)?,
            "failures" => config.consecutive_failures = Some(count(key, value)?),
            "open" => config.wait_in_open = duration(key, value)?,
            "half-open" => config.permitted_half_open_calls = count(key, value)?,
            "slow" => config.slow_call_duration = duration(key, value)?,
            other => return Err(format!("unknown breaker setting {other:?} (keys: {KEYS})")),
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The settings back as one line in the same syntax, every key spelled out.
pub fn describe(config: &Config) -> String {
    let window = match config.window {
        Window::Count(n) => n.to_string(),
        Window::Time(d) => keel_core::duration::format(d),
    };
    let mut line = format!(
        "failure-rate={},window={window},min-calls={},open={},half-open={},slow={},slow-rate={}",
        config.failure_rate_threshold,
        config.minimum_calls,
        keel_core::duration::format(config.wait_in_open),
        config.permitted_half_open_calls,
        keel_core::duration::format(config.slow_call_duration),
        config.slow_call_rate_threshold,
    );
    if let Some(n) = config.consecutive_failures {
        line.push_str(&format!(",failures={n}"));
    }
    line
}

fn percent(key: &str, value: &str) -> Result<f64, String> {
    value
        .trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| format!("{key}={value:?}: expected a percentage such as 50"))
}

fn count(key: &str, value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .map_err(|_| format!("{key}={value:?}: expected a whole number"))
}

fn duration(key: &str, value: &str) -> Result<std::time::Duration, String> {
    keel_core::duration::parse(value).map_err(|e| format!("{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_usual_spec_sets_rate_window_and_open_wait() {
        let config = parse("failure-rate=50,window=10,open=5s").expect("valid");
        assert_eq!(config.failure_rate_threshold, 50.0);
        assert_eq!(config.window, Window::Count(10));
        assert_eq!(config.wait_in_open, Duration::from_secs(5));
        assert_eq!(config.consecutive_failures, None);
    }

    #[test]
    fn every_key_is_understood() {
        let config = parse(
            "failure-rate=40%, window=30s, min-calls=4, failures=2, open=250ms, half-open=1, slow=1s, slow-rate=90",
        )
        .expect("valid");
        assert_eq!(
            config,
            Config {
                window: Window::Time(Duration::from_secs(30)),
                failure_rate_threshold: 40.0,
                slow_call_rate_threshold: 90.0,
                slow_call_duration: Duration::from_secs(1),
                minimum_calls: 4,
                consecutive_failures: Some(2),
                wait_in_open: Duration::from_millis(250),
                permitted_half_open_calls: 1,
            }
        );
        assert_eq!(parse(&describe(&config)), Ok(config));
    }

    #[test]
    fn an_empty_spec_is_the_default() {
        assert_eq!(parse(""), Ok(Config::default()));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |spec: &str| parse(spec).expect_err(spec);
        assert!(err("rate=50").contains("unknown breaker setting \"rate\""));
        assert!(err("failure-rate").contains("expected key=value"));
        assert!(err("failure-rate=lots").contains("expected a percentage"));
        assert!(err("failure-rate=150").contains("invalid failure_rate_threshold"));
        assert!(err("window=0").contains("invalid window"));
        assert!(err("open=soon").contains("open:"));
        assert!(err("half-open=-1").contains("expected a whole number"));
    }
}
