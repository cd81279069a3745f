//! The error for a configuration this crate refuses, shared by every pattern.

use thiserror::Error;

/// A setting out of its range, named so the caller can point at the flag or key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {problem}")]
pub struct ConfigError {
    /// The setting, as named in the config struct (e.g. `failure_rate_threshold`).
    pub field: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

/// Checks a percentage threshold: above 0, at most 100.
pub(crate) fn check_percent(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be above 0 and at most 100 (a percentage), got {value}"),
        ))
    }
}

/// Checks that a count is at least 1.
pub(crate) fn check_positive(field: &'static str, value: u64) -> Result<(), ConfigError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(ConfigError::new(field, "must be at least 1, got 0"))
    }
}
