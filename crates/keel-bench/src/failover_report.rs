//! The figures of one failover run, printed for a person or as JSON for the script.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{FailoverArgs, Target};
use crate::gaps::{self, Cycle, Windows};

/// How reading the acknowledged writes back went.
#[derive(Debug)]
pub enum Verification {
    Done {
        /// The primary that was read.
        against: String,
        lost: u64,
        lost_sample: Vec<String>,
    },
    /// No primary could be read within `--verify-timeout`: nothing is known about loss.
    Failed(String),
}

/// Times in milliseconds. `lost` is `null` when the writes could not be read back.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub target: Target,
    pub concurrency: u32,
    pub rate: u32,
    pub duration_s: f64,
    pub stopped_by: &'static str,
    pub attempts: u64,
    pub failed_attempts: u64,
    pub acked: u64,
    pub acked_per_s: f64,
    #[serde(flatten)]
    pub windows: WindowFigures,
    /// Per kill: how long until the writers' lookups found a new primary (the monitor,
    /// a member or the sentinels named one); `null` if they never did.
    pub new_primary_named_ms: Vec<Option<f64>>,
    pub named_median_ms: Option<f64>,
    /// The longest pause between acknowledgements outside the kill windows: restarts,
    /// rejoins, or, with no kills, the whole run.
    pub longest_gap_elsewhere_ms: f64,
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_sample: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_against: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
    /// The first failed attempt, so that a run where nothing worked says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The windows of a run, in milliseconds: the figures every failover report gives, the
/// same fields in the same JSON whatever the system (flattened into its report).
#[derive(Debug, Serialize)]
pub struct WindowFigures {
    /// Kill marks received.
    pub kills: usize,
    /// Kills after which writes were acknowledged again.
    pub recovered: usize,
    /// One per recovered kill, in order.
    pub windows_ms: Vec<f64>,
    pub window_min_ms: Option<f64>,
    pub window_median_ms: Option<f64>,
    pub window_p99_ms: Option<f64>,
    pub window_max_ms: Option<f64>,
}

impl WindowFigures {
    pub fn new(windows: &Windows) -> Self {
        let mut recovered: Vec<Duration> = windows
            .cycles
            .iter()
            .filter_map(|cycle| match cycle {
                Cycle::Window(window) => Some(*window),
                Cycle::NeverRecovered => None,
            })
            .collect();
        let windows_ms = recovered.iter().copied().map(ms).collect();
        recovered.sort_unstable();
        let at = |q| gaps::quantile(&recovered, q).map(ms);
        Self {
            kills: windows.cycles.len(),
            recovered: recovered.len(),
            windows_ms,
            window_min_ms: at(0.0),
            window_median_ms: at(0.5),
            window_p99_ms: at(0.99),
            window_max_ms: recovered.last().copied().map(ms),
        }
    }
}

impl FailoverReport {
    /// `tallies` holds each writer's (attempts, failures).
    #[allow(clippy::too_many_arguments)] // one call site, every argument named there
    pub fn new(
        args: &FailoverArgs,
        duration: Duration,
        stopped_by: &'static str,
        tallies: &[(u64, u64)],
        first_error: Option<String>,
        windows: &Windows,
        named: &[Option<Duration>],
        acked: u64,
        verification: Verification,
    ) -> Self {
        let mut named_sorted: Vec<Duration> = named.iter().flatten().copied().collect();
        named_sorted.sort_unstable();
        let (lost, lost_sample, verified_against, verify_error) = match verification {
            Verification::Done {
                against,
                lost,
                lost_sample,
            } => (Some(lost), lost_sample, Some(against), None),
            Verification::Failed(error) => (None, Vec::new(), None, Some(error)),
        };
        Self {
            target: args.target,
            concurrency: args.concurrency,
            rate: args.rate,
            duration_s: duration.as_secs_f64(),
            stopped_by,
            attempts: tallies.iter().map(|t| t.0).sum(),
            failed_attempts: tallies.iter().map(|t| t.1).sum(),
            acked,
            acked_per_s: acked as f64 / duration.as_secs_f64().max(f64::EPSILON),
            windows: WindowFigures::new(windows),
            new_primary_named_ms: named.iter().map(|n| n.map(ms)).collect(),
            named_median_ms: gaps::quantile(&named_sorted, 0.5).map(ms),
            longest_gap_elsewhere_ms: ms(windows.longest_gap_elsewhere),
            lost,
            lost_sample,
            verified_against,
            verify_error,
            first_error,
        }
    }
}

/// `-` for a figure there is none of, else whole milliseconds.
pub(crate) fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

impl fmt::Display for WindowFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kills {}, recovered {}; window ms: min {}  median {}  p99 {}  max {}",
            self.kills,
            self.recovered,
            opt_ms(self.window_min_ms),
            opt_ms(self.window_median_ms),
            opt_ms(self.window_p99_ms),
            opt_ms(self.window_max_ms)
        )
    }
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "target {}: {} writers, {} writes/s cap, {:.1} s (stopped by {})",
            self.target,
            self.concurrency,
            if self.rate == 0 {
                "no".to_owned()
            } else {
                self.rate.to_string()
            },
            self.duration_s,
            self.stopped_by
        )?;
        writeln!(
            f,
            "  {} acknowledged ({:.0}/s), {} of {} attempts failed",
            self.acked, self.acked_per_s, self.failed_attempts, self.attempts
        )?;
        writeln!(f, "  {}", self.windows)?;
        writeln!(
            f,
            "  new primary named after (median): {} ms",
            opt_ms(self.named_median_ms)
        )?;
        writeln!(
            f,
            "  longest gap outside the windows: {:.0} ms",
            self.longest_gap_elsewhere_ms
        )?;
        match (self.lost, &self.verified_against, &self.verify_error) {
            (Some(lost), Some(against), _) => {
                writeln!(
                    f,
                    "  lost acknowledged writes: {lost} (read back from {against})"
                )?;
                if !self.lost_sample.is_empty() {
                    writeln!(f, "  for example: {}", self.lost_sample.join(", "))?;
                }
            }
            (_, _, Some(error)) => writeln!(
                f,
                "  lost acknowledged writes: unknown, could not read back: {error}"
            )?,
            _ => {}
        }
        if let Some(error) = &self.first_error {
            writeln!(f, "  first failed attempt: {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_figures_count_every_kill_and_rank_only_the_recovered_ones() {
        let windows = Windows {
            cycles: vec![
                Cycle::Window(Duration::from_millis(700)),
                Cycle::NeverRecovered,
                Cycle::Window(Duration::from_millis(600)),
                Cycle::Window(Duration::from_millis(900)),
            ],
            longest_gap_elsewhere: Duration::from_millis(40),
        };
        let figures = WindowFigures::new(&windows);
        assert_eq!((figures.kills, figures.recovered), (4, 3));
        assert_eq!(figures.windows_ms, vec![700.0, 600.0, 900.0]);
        assert_eq!(figures.window_min_ms, Some(600.0));
        assert_eq!(figures.window_median_ms, Some(700.0));
        assert_eq!(figures.window_p99_ms, Some(900.0));
        assert_eq!(figures.window_max_ms, Some(900.0));
        // The scripts read these names at the top level of both reports' JSON.
        let json = serde_json::to_value(&figures).unwrap_or_default();
        for key in [
            "kills",
            "recovered",
            "windows_ms",
            "window_median_ms",
            "window_p99_ms",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }
}
