//! The monitor's timing settings: one source of truth, handed to the nodes in every view.

use std::time::Duration;

use crate::wire::Timing;

/// How the monitor detects failures and times failovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How often nodes heartbeat.
    pub heartbeat_interval: Duration,
    /// How long without a heartbeat from the primary before it is suspected.
    pub heartbeat_timeout: Duration,
    /// How many direct probes must fail before a suspected primary is declared failed.
    pub probe_retries: u32,
    /// How long one lease renewal lasts.
    pub lease: Duration,
    /// Added to every lease wait, for clocks that run at slightly different rates.
    pub drift: Duration,
    /// How long a switchover may stay `draining` before it is abandoned (the primary never
    /// reported its final lsn, or the target never reached it).
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(300),
            probe_retries: 2,
            lease: Duration::from_millis(500),
            drift: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A combination of settings the monitor cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A zero heartbeat interval.
    #[error("the heartbeat interval must be more than 0")]
    ZeroInterval,
    /// The timeout would fire between two regular heartbeats.
    #[error(
        "the heartbeat timeout ({timeout:?}) must be longer than the heartbeat interval ({interval:?}), or every primary is suspected between two heartbeats"
    )]
    TimeoutNotAboveInterval {
        /// The timeout.
        timeout: Duration,
        /// The interval.
        interval: Duration,
    },
    /// The lease would lapse between two regular renewals.
    #[error(
        "the lease ({lease:?}) must be longer than the heartbeat interval ({interval:?}), or the primary loses its lease between two renewals"
    )]
    LeaseNotAboveInterval {
        /// The lease.
        lease: Duration,
        /// The interval.
        interval: Duration,
    },
    /// Too many probes: the failover would take too long to mean anything.
    #[error("probe retries must be at most 100, not {0}")]
    TooManyProbes(u32),
}

impl Settings {
    /// Checks what must hold for failure detection and leases to work.
    ///
    /// The lease need not exceed the heartbeat timeout for safety: a failover always waits
    /// out the last grant, whatever the lease. A lease shorter than the timeout only makes
    /// the primary stop writing before the monitor would even suspect it.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.heartbeat_interval.is_zero() {
            return Err(SettingsError::ZeroInterval);
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(SettingsError::TimeoutNotAboveInterval {
                timeout: self.heartbeat_timeout,
                interval: self.heartbeat_interval,
            });
        }
        if self.lease <= self.heartbeat_interval {
            return Err(SettingsError::LeaseNotAboveInterval {
                lease: self.lease,
                interval: self.heartbeat_interval,
            });
        }
        if self.probe_retries > 100 {
            return Err(SettingsError::TooManyProbes(self.probe_retries));
        }
        Ok(())
    }

    /// The settings as the nodes see them.
    pub fn timing(&self) -> Timing {
        Timing {
            heartbeat_interval_ms: millis(self.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.heartbeat_timeout),
            lease_ms: millis(self.lease),
            drift_ms: millis(self.drift),
        }
    }
}

/// Whole milliseconds, saturating (durations come from flags limited to 24 h).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
